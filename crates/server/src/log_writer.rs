//! Where log lines go: appended to one buffer that a thread of its own writes out in
//! batches, a moment after the first line of each batch arrives (sooner for a warning or an
//! error, or when the batch grows large).
//!
//! A request never waits on a write, and a busy server's lines cost one system call per
//! batch rather than per line. Waking a writer thread for every line, as a channel to it
//! does, cost a lightly loaded server more CPU than the rest of the request (a wake, a
//! write and a sleep per line), on cores it shares with the requests.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// When a batch is written.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// How long after its first line a batch is written.
    pub delay: Duration,
    /// A batch this large is written at once.
    pub soon_bytes: usize,
    /// Past this many bytes waiting (the output is slower than the lines), whoever adds a
    /// line writes the batch itself: the logging threads slow down, no line is lost.
    pub limit_bytes: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(20),
            soon_bytes: 64 * 1024,
            limit_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The `MakeWriter` of the log; cloned freely.
#[derive(Debug, Clone)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

/// Writes what is waiting and stops the writer thread when dropped; lines logged later are
/// written by their own thread.
#[derive(Debug)]
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    batching: Batching,
    waiting: Mutex<Vec<u8>>,
    /// Taken before `waiting` is released by whoever writes a batch, so batches reach the
    /// output in the order their lines were added.
    output: Mutex<Box<dyn Write + Send>>,
    urgent: AtomicBool,
    closed: AtomicBool,
    writer_thread: OnceLock<Thread>,
}

impl LineWriter {
    /// A writer to `output` and the thread that writes its batches.
    pub fn new(output: Box<dyn Write + Send>, batching: Batching) -> io::Result<(Self, Flusher)> {
        let shared = Arc::new(Shared {
            batching,
            waiting: Mutex::new(Vec::new()),
            output: Mutex::new(output),
            urgent: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            writer_thread: OnceLock::new(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.write_batches()
            })?;
        let _ = shared.writer_thread.set(thread.thread().clone());
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Self { shared }, flusher))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("batching", &self.batching)
            .field("waiting_bytes", &lock(&self.waiting).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn wake(&self) {
        if let Some(thread) = self.writer_thread.get() {
            thread.unpark();
        }
    }

    fn add(&self, line: &[u8], urgent: bool) -> io::Result<()> {
        let mut waiting = lock(&self.waiting);
        if self.closed.load(Ordering::SeqCst) {
            // The writer thread is gone (or going, after its last batch): write it here.
            let mut output = lock(&self.output);
            drop(waiting);
            output.write_all(line)?;
            return output.flush();
        }
        let first = waiting.is_empty();
        waiting.extend_from_slice(line);
        if waiting.len() >= self.batching.limit_bytes {
            let mut output = lock(&self.output);
            let result = output.write_all(&waiting).and_then(|()| output.flush());
            waiting.clear();
            return result;
        }
        let soon = urgent || waiting.len() >= self.batching.soon_bytes;
        drop(waiting);
        if soon {
            self.urgent.store(true, Ordering::SeqCst);
        }
        if first || soon {
            self.wake();
        }
        Ok(())
    }

    /// The writer thread: sleeps until a batch starts, lets it gather for `delay` (or less,
    /// when woken for an urgent line or a large batch), writes it, and again until closed.
    fn write_batches(&self) {
        let mut batch = Vec::new();
        loop {
            let closed = self.closed.load(Ordering::SeqCst);
            let has_lines = !lock(&self.waiting).is_empty();
            if !closed && !has_lines {
                std::thread::park();
                continue;
            }
            if !closed {
                let due = Instant::now() + self.batching.delay;
                while !self.urgent.swap(false, Ordering::SeqCst)
                    && !self.closed.load(Ordering::SeqCst)
                {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
            }
            let mut waiting = lock(&self.waiting);
            std::mem::swap(&mut *waiting, &mut batch);
            let mut output = lock(&self.output);
            drop(waiting);
            // Nowhere to report a failed write of the log but the log.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            drop(output);
            batch.clear();
            // A burst's buffer is not kept for good.
            batch.shrink_to(self.batching.soon_bytes);
            if closed {
                return;
            }
        }
    }
}

/// One line's writer, as tracing-subscriber asks for one per event.
#[derive(Debug)]
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.add(bytes, self.urgent)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LineWriter {
    /// Adds one whole line (ending in a newline) of a level below warning.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        self.shared.add(line, false)
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            shared: &self.shared,
            urgent: false,
        }
    }

    /// Warnings and errors are written without waiting for the batch's delay.
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An output whose bytes a test can read, counting its writes.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut captured = lock(&self.0);
            captured.0.extend_from_slice(bytes);
            captured.1 += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(lock(&self.0).0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            lock(&self.0).1
        }
    }

    fn writer(batching: Batching) -> (LineWriter, Flusher, Captured) {
        let captured = Captured::default();
        let (writer, flusher) = LineWriter::new(Box::new(captured.clone()), batching).unwrap();
        (writer, flusher, captured)
    }

    fn info_line(writer: &LineWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    fn wait_for(captured: &Captured, text: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if captured.text().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn every_line_of_every_thread_is_written_in_its_order_by_the_time_the_flusher_is_dropped() {
        let (writer, flusher, captured) = writer(Batching {
            delay: Duration::from_millis(5),
            soon_bytes: 4096,
            limit_bytes: 64 * 1024,
        });
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for line in 0..5000 {
                        info_line(&writer, &format!("t{thread} {line}\n"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(flusher);
        let text = captured.text();
        for thread in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("t{thread} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..5000).collect::<Vec<_>>(), "thread {thread}");
        }
        // Batched: far fewer writes than lines.
        assert!(
            captured.writes() < 20_000 / 4,
            "{} writes",
            captured.writes()
        );
        // After the flusher, a line is written by its own thread.
        info_line(&writer, "late\n");
        assert!(captured.text().ends_with("late\n"));
    }

    #[test]
    fn a_line_waits_for_the_delay_and_a_warning_does_not() {
        let (writer, _flusher, captured) = writer(Batching {
            delay: Duration::from_secs(30),
            ..Batching::default()
        });
        info_line(&writer, "routine\n");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(captured.text(), "", "written before its delay");
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::warn!("urgent"));
        assert!(wait_for(&captured, "routine\n", Duration::from_secs(5)));
        assert!(
            captured.text().trim_end().ends_with("urgent"),
            "{}",
            captured.text()
        );
    }

    #[test]
    fn a_large_batch_is_written_before_its_delay() {
        let (writer, _flusher, captured) = writer(Batching {
            delay: Duration::from_secs(30),
            soon_bytes: 100,
            limit_bytes: 1_000_000,
        });
        // Each line alone reaches `soon_bytes`, so whenever the writer thread takes the
        // batch (all 20 lines or a part), what is left is large too: nothing waits 30 s.
        let filler = "x".repeat(100);
        for n in 0..20 {
            info_line(&writer, &format!("line {n} {filler}\n"));
        }
        assert!(wait_for(&captured, "line 19 ", Duration::from_secs(5)));
    }

    #[test]
    fn past_the_limit_the_logging_thread_writes_the_batch_itself() {
        let (writer, _flusher, captured) = writer(Batching {
            delay: Duration::from_secs(30),
            soon_bytes: 1_000_000,
            limit_bytes: 50,
        });
        for n in 0..10 {
            info_line(&writer, &format!("line {n}\n"));
        }
        // No waiting: the line that crossed the limit wrote everything before it returned.
        assert!(
            captured.text().starts_with("line 0\nline 1\n"),
            "{}",
            captured.text()
        );
    }
}
