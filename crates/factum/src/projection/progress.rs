//! A rebuild's progress as a text bar, for command-line tools.
//!
//! On a terminal the bar is redrawn in place (`\r`); into a pipe or a log
//! file it prints a plain line only every 10 % so the output stays
//! readable. Hand-written rather than a crate such as `indicatif`: one bar,
//! updated about every 100 ms by [`ProjectionHandle::rebuild`], needs no
//! multi-bar layout, spinner or terminal-width probing, and the toolkit
//! keeps its dependencies few.
//!
//! ```no_run
//! # async fn demo<S: factum_core::EventStore + Clone, M: factum::ReadModelStore>(
//! #     handle: factum::ProjectionHandle<S, M>) -> Result<(), factum::ProjectionError> {
//! use factum::projection::ProgressBar;
//! let mut bar = ProgressBar::stderr("account_summary");
//! let generation = handle.rebuild(|p| bar.update(&p)).await?;
//! bar.finish(&format!("now generation {generation}"));
//! # Ok(()) }
//! ```
//!
//! [`ProjectionHandle::rebuild`]: super::ProjectionHandle::rebuild

use std::io::{IsTerminal, Write};

use super::RebuildProgress;

/// Cells of the bar.
const WIDTH: usize = 30;

/// One line: `label [#########.....]  45% 4500/10000 g2`.
pub fn render(label: &str, p: &RebuildProgress) -> String {
    let fraction = p.fraction().clamp(0.0, 1.0);
    let filled = (fraction * WIDTH as f64).floor() as usize;
    let done = p.position.map_or(0, |x| x.0);
    let total = p.head.map_or(0, |h| h.0);
    format!(
        "{label} [{}{}] {:>3}% {done}/{total} positions, {} events applied, generation {}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        (fraction * 100.0).floor() as u32,
        p.events_applied,
        p.generation
    )
}

/// Draws [`RebuildProgress`] reports (see the module documentation).
pub struct ProgressBar {
    label: String,
    out: Box<dyn Write + Send>,
    redraw: bool,
    /// The last tenth printed (non-terminal output).
    printed_tenth: Option<u32>,
    drawn: bool,
}

impl ProgressBar {
    /// A bar on standard error, redrawn in place when it is a terminal.
    pub fn stderr(label: impl Into<String>) -> Self {
        let redraw = std::io::stderr().is_terminal();
        ProgressBar::new(label, Box::new(std::io::stderr()), redraw)
    }

    /// A bar on any writer: `redraw` for a terminal (`\r`), else a line
    /// per 10 %.
    pub fn new(label: impl Into<String>, out: Box<dyn Write + Send>, redraw: bool) -> Self {
        ProgressBar {
            label: label.into(),
            out,
            redraw,
            printed_tenth: None,
            drawn: false,
        }
    }

    /// Shows a report (pass it to `rebuild` as `|p| bar.update(&p)`).
    /// Output errors are ignored: progress must never fail a rebuild.
    pub fn update(&mut self, p: &RebuildProgress) {
        let line = render(&self.label, p);
        if self.redraw {
            let _ = write!(self.out, "\r{line}\x1b[K");
            self.drawn = true;
        } else {
            let tenth = (p.fraction().clamp(0.0, 1.0) * 10.0).floor() as u32;
            if self.printed_tenth.is_some_and(|t| t >= tenth) {
                return;
            }
            self.printed_tenth = Some(tenth);
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
    }

    /// Ends the bar's line, then prints `message` on its own line.
    pub fn finish(&mut self, message: &str) {
        if self.drawn {
            let _ = writeln!(self.out);
        }
        let _ = writeln!(self.out, "{}: {message}", self.label);
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use factum_core::Position;

    use super::*;

    fn at(position: Option<u64>, head: Option<u64>) -> RebuildProgress {
        RebuildProgress {
            generation: 2,
            position: position.map(Position),
            head: head.map(Position),
            events_applied: position.unwrap_or(0),
        }
    }

    #[test]
    fn renders_the_fraction_as_cells() {
        assert_eq!(
            render("m", &at(Some(5), Some(10))),
            "m [###############...............]  50% 5/10 positions, 5 events applied, generation 2"
        );
        assert!(
            render("m", &at(None, Some(10))).contains("[..............................]   0% 0/10")
        );
        assert!(
            render("m", &at(Some(10), Some(10))).contains(&format!("[{}] 100%", "#".repeat(30)))
        );
        // An empty store is done at once.
        assert!(render("m", &at(None, None)).contains("100% 0/0"));
    }

    /// Collects what the bar writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_terminal_redraws_in_place_a_pipe_gets_a_line_per_tenth() {
        let out = Captured::default();
        let mut bar = ProgressBar::new("m", Box::new(out.clone()), true);
        for p in [1, 51, 100] {
            bar.update(&at(Some(p), Some(100)));
        }
        bar.finish("generation 2 is live");
        let text = out.text();
        assert_eq!(text.matches('\r').count(), 3);
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(text.ends_with("100% 100/100 positions, 100 events applied, generation 2\x1b[K\nm: generation 2 is live\n"));

        let out = Captured::default();
        let mut bar = ProgressBar::new("m", Box::new(out.clone()), false);
        for p in 1..=1000 {
            bar.update(&at(Some(p), Some(1000)));
        }
        bar.finish("done");
        let text = out.text();
        assert!(!text.contains('\r'));
        // 0 %, 10 %, …, 100 %, then the message.
        assert_eq!(text.lines().count(), 12, "{text}");
    }
}
