//! Owns the terminal: raw mode and the alternate screen while the console runs, restored on
//! drop, on a panic in the console thread (panic hook), and on SIGTERM (the app loop sees the
//! stop flag, returns, and the drop restores).

use std::io::{self, Stdout};
use std::sync::OnceLock;
use std::thread::ThreadId;

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

pub type Term = Terminal<CrosstermBackend<Stdout>>;

pub struct Tui {
    pub terminal: Term,
}

/// The thread that owns the terminal; only its panics restore it (a panic elsewhere is caught
/// by tokio or the worker and the console keeps running).
static OWNER: OnceLock<ThreadId> = OnceLock::new();

impl Tui {
    pub fn enter() -> io::Result<Tui> {
        install_panic_hook();
        enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, Hide) {
            let _ = restore();
            return Err(e);
        }
        let terminal = Terminal::new(CrosstermBackend::new(out))?;
        Ok(Tui { terminal })
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = restore();
    }
}

pub fn restore() -> io::Result<()> {
    disable_raw_mode()?;
    execute!(io::stdout(), LeaveAlternateScreen, Show)
}

fn install_panic_hook() {
    let me = std::thread::current().id();
    if OWNER.set(me).is_err() {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if OWNER.get() == Some(&std::thread::current().id()) {
            // Restore first so the panic message lands on the normal screen, readable.
            let _ = restore();
        }
        previous(info);
    }));
}
