//! An image file is a series of independent zstd frames, cut at entry boundaries chosen by the
//! entries' paths, so that images of two trees that differ in one file share every frame but
//! the few around it, and a node that holds one image fetches only the frames it lacks of the
//! next (`FrameIndex` lists them). Decompressors read concatenated frames as one stream, and
//! the image is still named by the hash of its whole file.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::ImageId;

/// Once this much of the tar stream is buffered, the frame ends after the current entry.
const FRAME_TARGET: usize = 256 << 10;
/// No frame holds more than this much of the tar stream: a large file is cut inside.
const FRAME_MAX: usize = 1 << 20;
/// One entry in this many (by its path's hash) ends a frame whatever its size: those cuts do
/// not move when a file before them grows, so a change's effect ends at the next one.
const PATH_CUT_ONE_IN: u8 = 16;

/// One frame of an image file: its compressed length and the blake3 hash of its bytes (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub length: u64,
    pub hash: String,
}

/// An image file's frames, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FrameIndex(pub Vec<Frame>);

impl FrameIndex {
    /// The index of an image packed as one frame (before images had several): the whole file,
    /// whose hash is the image's id.
    pub fn whole(id: &ImageId, length: u64) -> FrameIndex {
        FrameIndex(vec![Frame {
            length,
            hash: id.to_string(),
        }])
    }

    /// The length of the image file.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|frame| frame.length).sum()
    }

    /// Each frame with its offset in the file.
    pub fn with_offsets(&self) -> impl Iterator<Item = (u64, &Frame)> {
        self.0.iter().scan(0u64, |offset, frame| {
            let at = *offset;
            *offset += frame.length;
            Some((at, frame))
        })
    }
}

/// The hash a frame's bytes must have.
pub fn frame_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Where the tar stream goes while it is packed: buffered into frames, each sent to
/// [`compress_frames`] on another thread once it ends.
pub(crate) struct FrameWriter {
    buffer: Vec<u8>,
    frames: mpsc::SyncSender<Vec<u8>>,
}

impl FrameWriter {
    pub(crate) fn new(frames: mpsc::SyncSender<Vec<u8>>) -> FrameWriter {
        FrameWriter {
            buffer: Vec::with_capacity(FRAME_MAX),
            frames,
        }
    }

    /// The entry at `path` was written whole: the frame ends here if it is large enough or if
    /// the path says so.
    pub(crate) fn entry_ended(&mut self, path: &Path) -> io::Result<()> {
        let cut_here =
            blake3::hash(path.as_os_str().as_bytes()).as_bytes()[0].is_multiple_of(PATH_CUT_ONE_IN);
        if cut_here || self.buffer.len() >= FRAME_TARGET {
            self.cut()?;
        }
        Ok(())
    }

    /// Ends the current frame.
    pub(crate) fn cut(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.buffer, Vec::with_capacity(FRAME_MAX));
        self.frames
            .send(frame)
            .map_err(|_| io::Error::other("the compressor stopped"))
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = buf.len().min(FRAME_MAX - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..taken]);
        if self.buffer.len() == FRAME_MAX {
            self.cut()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses each frame received, in order, into `out`; ends when the sender is dropped.
pub(crate) fn compress_frames<W: Write>(
    frames: mpsc::Receiver<Vec<u8>>,
    level: i32,
    mut out: W,
) -> io::Result<(W, FrameIndex)> {
    let mut index = FrameIndex::default();
    for frame in frames {
        let compressed = zstd::bulk::compress(&frame, level)?;
        out.write_all(&compressed)?;
        index.0.push(Frame {
            length: compressed.len() as u64,
            hash: frame_hash(&compressed),
        });
    }
    Ok((out, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_lengths() {
        let frame = |length| Frame {
            length,
            hash: String::new(),
        };
        let index = FrameIndex(vec![frame(3), frame(5), frame(2)]);
        let offsets: Vec<u64> = index.with_offsets().map(|(at, _)| at).collect();
        assert_eq!(offsets, [0, 3, 8]);
        assert_eq!(index.total(), 10);
    }

    #[test]
    fn a_write_larger_than_a_frame_is_cut_into_frames_of_the_largest_size() {
        let (sender, receiver) = mpsc::sync_channel(16);
        let mut writer = FrameWriter::new(sender);
        writer.write_all(&vec![7u8; FRAME_MAX * 2 + 10]).unwrap();
        writer.cut().unwrap();
        drop(writer);
        let sizes: Vec<usize> = receiver.iter().map(|frame| frame.len()).collect();
        assert_eq!(sizes, [FRAME_MAX, FRAME_MAX, 10]);
    }
}
