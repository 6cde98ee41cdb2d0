//! `scoutvm`: make, dump and check scoutfs volumes on image files.
fn main() {
    eprintln!("scoutvm: no commands yet");
    std::process::exit(2);
}
