//! Input: where the command loop's lines come from — a script on stdin (the original's
//! behaviour: prompts printed as text, lines read as they come), or a person at a terminal
//! (rustyline: editing, history, a hidden password, and incoming lines printed above the
//! line being typed).

use std::borrow::Cow;
use std::io::{self, BufRead, Lines, StdinLock};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::sys::termios::{self, SetArg, Termios};

use rustyline::completion::Completer;
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{ColorMode, Config, Editor, ExternalPrinter, Helper};

use crate::ui;

/// A source of input lines.
pub trait Input {
    /// Shows `prompt` and reads one line (without its line end). `None` at the end of
    /// input; `Some(Err)` with `InvalidData` for a line that is not UTF-8.
    fn line(&mut self, prompt: &str) -> Option<io::Result<String>>;

    /// Like [`Input::line`], for a password: not echoed, not kept in the history.
    fn secret(&mut self, prompt: &str) -> Option<io::Result<String>> {
        self.line(prompt)
    }
}

/// Lines piped to stdin, with the prompts printed as the original client printed them.
pub struct Piped {
    /// Stdin's lines.
    lines: Lines<StdinLock<'static>>,
}

impl Piped {
    /// Reads stdin.
    pub fn stdin() -> Piped {
        Piped {
            lines: io::stdin().lock().lines(),
        }
    }
}

impl Input for Piped {
    fn line(&mut self, prompt: &str) -> Option<io::Result<String>> {
        if !prompt.is_empty() {
            ui::emit(prompt);
        }
        self.lines.next()
    }
}

/// Hides what is typed while [`Masking::on`]: every character shows as a blank.
#[derive(Default)]
struct Masking {
    /// Reading a password now.
    on: bool,
}

impl Highlighter for Masking {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if self.on {
            Cow::Owned(" ".repeat(line.chars().count()))
        } else {
            Cow::Borrowed(line)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        self.on && kind != CmdKind::MoveCursor
    }
}

impl Completer for Masking {
    type Candidate = String;
}

impl Hinter for Masking {
    type Hint = String;
}

impl Validator for Masking {}

impl Helper for Masking {}

/// The terminal's settings before the editor touched them, for [`restore_terminal`].
static SAVED_TERMIOS: OnceLock<Mutex<Termios>> = OnceLock::new();

/// Puts the terminal back as it was before interactive mode, for an exit that skips the
/// editor's own cleanup (the connection lost while a line is being read, in raw mode):
/// otherwise the shell the person returns to would not echo. Safe from any thread.
pub fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.get() {
        let t = t.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &t);
    }
}

/// A person at a terminal, through rustyline.
pub struct Interactive {
    /// The line editor, with the command history of this run.
    editor: Editor<Masking, DefaultHistory>,
}

impl Interactive {
    /// Sets up the editor and routes [`ui::emit`] through its external printer, so that
    /// what the server says appears above the line being typed.
    pub fn new() -> rustyline::Result<Interactive> {
        if let Ok(t) = termios::tcgetattr(io::stdin()) {
            let _ = SAVED_TERMIOS.set(Mutex::new(t));
        }
        let config = Config::builder()
            .auto_add_history(true)
            .history_ignore_dups(true)?
            .history_ignore_space(true)
            .max_history_size(1000)?
            .build();
        let mut editor = Editor::with_config(config)?;
        editor.set_helper(Some(Masking::default()));
        let mut printer = editor.create_external_printer()?;
        ui::set_printer(Box::new(move |text| {
            // Nothing sensible to do if the terminal is gone.
            let _ = printer.print(text);
        }));
        Ok(Interactive { editor })
    }

    fn read(&mut self, prompt: &str) -> Option<io::Result<String>> {
        match self.editor.readline(prompt) {
            Ok(line) => Some(Ok(line)),
            // Ctrl-C drops the line being typed, as a shell does.
            Err(ReadlineError::Interrupted) => Some(Ok(String::new())),
            Err(ReadlineError::Eof) => None,
            Err(ReadlineError::Io(e)) => Some(Err(e)),
            Err(e) => Some(Err(io::Error::other(e))),
        }
    }
}

impl Input for Interactive {
    fn line(&mut self, prompt: &str) -> Option<io::Result<String>> {
        self.read(prompt)
    }

    fn secret(&mut self, prompt: &str) -> Option<io::Result<String>> {
        if let Some(h) = self.editor.helper_mut() {
            h.on = true;
        }
        // Masking is done by the highlighter, which runs only with colours on.
        self.editor.set_color_mode(ColorMode::Forced);
        self.editor.set_auto_add_history(false);
        let line = self.read(prompt);
        self.editor.set_auto_add_history(true);
        self.editor.set_color_mode(ColorMode::Enabled);
        if let Some(h) = self.editor.helper_mut() {
            h.on = false;
        }
        line
    }
}
