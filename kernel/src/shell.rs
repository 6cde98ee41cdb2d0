//! The admin shell on the serial console: a task on the executor that
//! edits lines (`lineedit`), looks commands up in an extensible table and
//! runs them. Later subsystems add commands with [`register`]; each
//! command is an async fn of its arguments that prints with `kprintln!`
//! and returns `Err(message)` for a one-line error. The prompt is
//! `<node>> `; it comes back after every command, failed or not.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;

use scoutvm_kernel::lineedit::LineEditor;
use spin::Mutex;

use crate::console;

/// What a command returns: `Err` is printed as `error: <name>: <message>`.
pub type CmdResult = Result<(), String>;
pub type CmdFuture = Pin<Box<dyn Future<Output = CmdResult>>>;

/// One shell command. `run` gets the words after the command name.
#[derive(Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    /// Argument synopsis, e.g. `"HOST [COUNT]"`.
    pub usage: &'static str,
    pub help: &'static str,
    pub run: fn(Vec<String>) -> CmdFuture,
}

/// Most commands the table holds.
pub const COMMANDS_MAX: usize = 128;

static COMMANDS: Mutex<Vec<Command>> = Mutex::new(Vec::new());

/// Why [`register`] refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    Duplicate,
    TableFull,
}

/// Add a command to the shell.
pub fn register(cmd: Command) -> Result<(), RegisterError> {
    let mut table = COMMANDS.lock();
    if table.iter().any(|c| c.name == cmd.name) {
        return Err(RegisterError::Duplicate);
    }
    if table.len() >= COMMANDS_MAX {
        return Err(RegisterError::TableFull);
    }
    table.push(cmd);
    Ok(())
}

/// Box an async block as a command future.
pub fn boxed(f: impl Future<Output = CmdResult> + 'static) -> CmdFuture {
    Box::pin(f)
}

/// Every registered command, sorted by name.
pub fn commands() -> Vec<Command> {
    let mut v = COMMANDS.lock().clone();
    v.sort_by(|a, b| a.name.cmp(b.name));
    v
}

pub fn prompt() -> String {
    format!("{}> ", crate::runtime::node_name())
}

/// Parse and run one line.
pub async fn execute(line: &str) {
    let mut words = line.split_ascii_whitespace();
    let Some(name) = words.next() else { return };
    let args: Vec<String> = words.map(|w| w.to_string()).collect();
    let cmd = COMMANDS.lock().iter().find(|c| c.name == name).copied();
    match cmd {
        None => kprintln!("error: unknown command '{}' (try 'help')", name),
        Some(cmd) => {
            scoutvm_fs::counter!("shell.commands").inc();
            if let Err(msg) = (cmd.run)(args).await {
                scoutvm_fs::counter!("shell.errors").inc();
                kprintln!("error: {}: {}", cmd.name, msg);
            }
        }
    }
}

/// Show the prompt and the line typed so far; log records printed while
/// it shows keep it below them (`console::set_input_line`).
fn show_prompt(editor: &LineEditor, echo: &[u8]) {
    let mut line = prompt().into_bytes();
    console::write_bytes(echo);
    line.extend_from_slice(editor.current().as_bytes());
    console::set_input_line(Some(line));
}

/// The shell task: wait for the boot messages (`settled`, given by the
/// boot services, which the shell does not know), then read, edit, run,
/// forever.
pub async fn run(settled: impl core::future::Future<Output = ()>) {
    let mut editor = LineEditor::new();
    settled.await;
    show_prompt(&editor, prompt().as_bytes());
    loop {
        let input = console::read_input().await;
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        for b in input {
            if let Some(line) = editor.feed(b, &mut echo) {
                lines.push(line);
            }
        }
        if lines.is_empty() {
            show_prompt(&editor, &echo);
            continue;
        }
        console::write_bytes(&echo);
        console::set_input_line(None);
        for line in lines {
            execute(&line).await;
            console::write_str(&prompt());
        }
        show_prompt(&editor, &[]);
    }
}

/// Parse a decimal argument with a name for the error.
pub fn parse_arg<T: core::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} '{s}'"))
}

/// Fail unless the argument count is within `min..=max`.
pub fn expect_args(args: &[String], min: usize, max: usize, usage: &str) -> CmdResult {
    if args.len() < min || args.len() > max {
        return Err(format!("usage: {usage}"));
    }
    Ok(())
}
