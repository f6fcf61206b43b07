//! Server-sent events: splitting a stream into whole events as network
//! chunks arrive, reading an event's data, rewriting it.

/// Splits an event stream into whole events as network chunks arrive.
/// Events end at a blank line (`\r\n`, `\r` or `\n` line ends); the bytes
/// of an event not yet complete wait in a tail, scanned once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSplitter {
    tail: Vec<u8>,
    /// How far into `tail` the scan has gone.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

impl EventSplitter {
    /// Adds a chunk; returns the events it completed, each as its exact
    /// bytes including the blank line that ends it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.tail.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while let Some(&b) = self.tail.get(i) {
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let end = if b == b'\r' {
                match self.tail.get(i + 1) {
                    Some(b'\n') => i + 2,
                    Some(_) => i + 1,
                    // A CR last: it may be half of a CRLF; wait.
                    None => break,
                }
            } else {
                i + 1
            };
            let blank = i == self.line_start;
            i = end;
            self.line_start = end;
            if blank {
                if let Some(event) = self.tail.get(start..end) {
                    events.push(event.to_vec());
                }
                start = end;
            }
        }
        self.tail.drain(..start);
        self.scanned = i - start;
        self.line_start -= start;
        events
    }

    /// Bytes of an event not yet complete.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Takes what is left (the stream ended, or stopped being read).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = 0;
        std::mem::take(&mut self.tail)
    }
}

/// One event's lines (without their ends), as the bytes hold them.
fn event_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let (line, after) = rest.split_at(end);
        rest = match after {
            [b'\r', b'\n', more @ ..] => more,
            [_, more @ ..] => more,
            [] => &[],
        };
        Some(line)
    })
}

/// A `data` field line's value (`data:v`, `data: v`, or a bare `data`).
///
/// A byte-order mark before the field name counts as nothing: clients strip
/// one at the start of a stream, so a `\u{FEFF}data:` line must not hide an
/// event from the filter that the client reads.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
    if line == b"data" {
        return Some(b"");
    }
    let v = line.strip_prefix(b"data:")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

/// An event's `data` lines joined by `\n`, as the SSE spec assembles them;
/// `None` when it has no data (a comment, a priming event with an id only).
pub fn event_data(raw: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for v in event_lines(raw).filter_map(data_value) {
        match data.as_mut() {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(v);
            }
            None => data = Some(v.to_vec()),
        }
    }
    data
}

/// The event with its data replaced by `data` (one line: serialized JSON
/// has no line breaks); its other fields (`id`, `event`, `retry`) stay.
pub fn with_data(raw: &[u8], data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for line in event_lines(raw).filter(|l| !l.is_empty() && data_value(l).is_none()) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}
