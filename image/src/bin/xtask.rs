//! `cargo xtask`: build, run, test and bench the appliance.
fn main() {
    eprintln!("xtask: no commands yet");
    std::process::exit(2);
}
