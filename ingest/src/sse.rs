//! Splitting a server-sent-events byte stream into whole events without changing a byte.
//!
//! The gateway forwards provider streams as they come; it only needs to see each event's
//! `data` to count usage, and to drop the one usage chunk it asked for on a client's
//! behalf. So frames are cut at the blank line that ends an event (`\n\n` or `\r\n\r\n`,
//! per the WHATWG event-stream format) and passed on byte for byte.

use bytes::{Bytes, BytesMut};

/// Buffers a byte stream and yields complete event frames, terminators included.
#[derive(Debug, Default)]
pub struct SseFramer {
    buffer: BytesMut,
    /// Bytes of `buffer` already scanned without finding a frame end.
    scanned: usize,
}

impl SseFramer {
    /// Appends `chunk` and returns every frame it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.buffer.extend_from_slice(chunk);
        let mut frames = Vec::new();
        while let Some(end) = frame_end(&self.buffer, self.scanned.saturating_sub(3)) {
            frames.push(self.buffer.split_to(end).freeze());
            self.scanned = 0;
        }
        self.scanned = self.buffer.len();
        frames
    }

    /// The bytes of an unterminated last frame, if the stream ended inside one.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// The index just past the first blank line at or after `from`.
fn frame_end(buffer: &[u8], from: usize) -> Option<usize> {
    let mut index = from;
    while index + 1 < buffer.len() {
        if buffer[index] == b'\n' {
            if buffer[index + 1] == b'\n' {
                return Some(index + 2);
            }
            if buffer[index + 1] == b'\r' && buffer.get(index + 2) == Some(&b'\n') {
                return Some(index + 3);
            }
        }
        index += 1;
    }
    None
}

/// The `data` of one frame: its `data:` lines joined by `\n`, or `None` without any.
pub fn frame_data(frame: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(value) = line.strip_prefix("data:") else { continue };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_blank_lines_whatever_the_chunking() {
        let stream = b"event: a\ndata: {\"x\":1}\n\ndata: two\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        for chunk_size in 1..stream.len() {
            let mut framer = SseFramer::default();
            let mut frames = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                frames.extend(framer.push(chunk));
            }
            assert_eq!(framer.finish(), None, "chunk size {chunk_size}");
            let joined: Vec<u8> = frames.iter().flat_map(|frame| frame.to_vec()).collect();
            assert_eq!(joined, stream.to_vec(), "chunk size {chunk_size}: bytes unchanged");
            assert_eq!(frames.len(), 4, "chunk size {chunk_size}");
            assert_eq!(frame_data(&frames[0]).as_deref(), Some("{\"x\":1}"));
            assert_eq!(frame_data(&frames[1]).as_deref(), Some("two"));
            assert_eq!(frame_data(&frames[2]), None);
            assert_eq!(frame_data(&frames[3]).as_deref(), Some("[DONE]"));
        }
    }

    #[test]
    fn an_unterminated_tail_is_returned_at_the_end() {
        let mut framer = SseFramer::default();
        assert_eq!(framer.push(b"data: a\n\ndata: partial"), vec![Bytes::from_static(b"data: a\n\n")]);
        assert_eq!(framer.finish(), Some(Bytes::from_static(b"data: partial")));
    }

    #[test]
    fn multi_line_data_is_joined() {
        assert_eq!(frame_data(b"data: a\ndata:b\n\n").as_deref(), Some("a\nb"));
    }
}
