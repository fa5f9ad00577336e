//! Images pulled from the controller by content id during stage (SPEC section 11): the image's
//! frames first, then each frame copied from an image this instance holds when one has it, the
//! others fetched as byte ranges, every frame checked against its hash as it lands. The file
//! grows in order, so a pull that broke off resumes after its last whole frame; the whole file
//! is checked against the image's id before anything is unpacked (`release.rs`).

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lockstep_image::{Frame, FrameIndex, ImageId, frame_hash};
use lockstep_transport::RenewableIdentity;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::AgentError;

/// Largest image pulled.
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024 * 1024;
/// Largest frame index read (an image of millions of files has tens of thousands of frames).
const MAX_INDEX_BYTES: usize = 64 * 1024 * 1024;
/// Largest frame accepted: the packer makes none above a few MiB of compressed bytes.
const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;

/// An image this instance holds, whose frames a pull may copy.
pub struct HeldImage {
    pub file: PathBuf,
    pub frames: FrameIndex,
}

/// What a pull moved: bytes fetched from the controller, and bytes copied from held images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulled {
    pub fetched: u64,
    pub reused: u64,
}

/// Pulls images with this node's certificate, which the controller's image routes take.
pub struct ImagePuller {
    identity: Arc<RenewableIdentity>,
}

impl ImagePuller {
    pub fn new(identity: Arc<RenewableIdentity>) -> ImagePuller {
        ImagePuller { identity }
    }

    /// Brings image `id` from the controller at `source` into `part`, keeping what a broken
    /// pull left there; returns the image's frames and what moved.
    pub async fn pull(
        &self,
        source: &str,
        id: &ImageId,
        part: &Path,
        held: &[HeldImage],
    ) -> Result<(FrameIndex, Pulled), AgentError> {
        let url = format!("{}/v1/images/{id}", source.trim_end_matches('/'));
        let failed = |what: String| AgentError::Pull {
            image: id.short().to_owned(),
            controller: source.to_owned(),
            reason: what,
        };
        let index = self.frames(&url).await.map_err(&failed)?;
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .await
            .map_err(AgentError::io(format!("open {}", part.display())))?;
        let mut next = whole_frames_in(&mut file, &index)
            .await
            .map_err(AgentError::io(format!("read {}", part.display())))?;
        let resumed_at = index.0[..next].iter().map(|f| f.length).sum::<u64>();
        file.set_len(resumed_at)
            .await
            .map_err(AgentError::io(format!("truncate {}", part.display())))?;
        file.seek(SeekFrom::Start(resumed_at))
            .await
            .map_err(AgentError::io(format!("write {}", part.display())))?;
        let local = frames_held(held);
        let frames: Vec<(u64, Frame)> = index
            .with_offsets()
            .map(|(offset, frame)| (offset, frame.clone()))
            .collect();
        let mut pulled = Pulled::default();
        let write = |e| AgentError::io(format!("write {}", part.display()))(e);
        while next < frames.len() {
            let frame = &frames[next].1;
            if let Some(bytes) = copy_held(&local, frame).await {
                file.write_all(&bytes).await.map_err(write)?;
                pulled.reused += frame.length;
                next += 1;
                continue;
            }
            // A frame whose held copy turned out wrong is fetched too.
            let run_end = (next + 1..frames.len())
                .find(|&i| local.contains_key(frames[i].1.hash.as_str()))
                .unwrap_or(frames.len());
            let run = &frames[next..run_end];
            pulled.fetched += self
                .fetch_run(&url, run, &mut file)
                .await
                .map_err(&failed)?;
            next = run_end;
        }
        file.flush().await.map_err(write)?;
        file.sync_all().await.map_err(write)?;
        Ok((index, pulled))
    }

    async fn frames(&self, url: &str) -> Result<FrameIndex, String> {
        let response = self
            .identity
            .client()
            .get(format!("{url}/frames"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| format!("the controller is unreachable: {e}"))?;
        let response = successful(response).await?;
        if response
            .content_length()
            .is_some_and(|length| length > MAX_INDEX_BYTES as u64)
        {
            return Err("its frame index is too large".into());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("its frame index broke off: {e}"))?;
        let index: FrameIndex = serde_json::from_slice(&body)
            .map_err(|e| format!("its frame index is unreadable: {e}"))?;
        if index.0.is_empty()
            || index.total() > MAX_IMAGE_BYTES
            || index.0.iter().any(|f| f.length > MAX_FRAME_BYTES)
        {
            return Err(format!(
                "its frame index is refused: no frames, a frame above {MAX_FRAME_BYTES} bytes, \
                 or more than {MAX_IMAGE_BYTES} bytes in all"
            ));
        }
        Ok(index)
    }

    /// Fetches consecutive frames as one range, checking each as it completes; the bytes
    /// fetched. A frame that breaks off is not written.
    async fn fetch_run(
        &self,
        url: &str,
        run: &[(u64, Frame)],
        file: &mut tokio::fs::File,
    ) -> Result<u64, String> {
        let first = run[0].0;
        let last = run
            .last()
            .map(|(offset, frame)| offset + frame.length - 1)
            .expect("a run has a frame");
        let response = self
            .identity
            .client()
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={first}-{last}"))
            .send()
            .await
            .map_err(|e| format!("the controller is unreachable: {e}"))?;
        let response = successful(response).await?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(format!(
                "asked for bytes {first}-{last}, it answered {}",
                response.status()
            ));
        }
        let mut body = response.bytes_stream();
        let mut written = 0;
        let mut pending: Vec<u8> = Vec::new();
        let mut fetched = 0u64;
        while let Some((_, frame)) = run.get(written) {
            if pending.len() as u64 >= frame.length {
                let rest = pending.split_off(frame.length as usize);
                if frame_hash(&pending) != frame.hash {
                    return Err("a frame it sent does not match its hash".into());
                }
                file.write_all(&pending)
                    .await
                    .map_err(|e| format!("cannot write the image: {e}"))?;
                fetched += frame.length;
                pending = rest;
                written += 1;
                continue;
            }
            match body.next().await {
                Some(chunk) => pending
                    .extend_from_slice(&chunk.map_err(|e| format!("the image broke off: {e}"))?),
                None => {
                    return Err(format!(
                        "the image broke off after {} of {} bytes asked",
                        fetched + pending.len() as u64,
                        last - first + 1
                    ));
                }
            }
        }
        if !pending.is_empty() || body.next().await.is_some() {
            return Err("it sent more bytes than asked".into());
        }
        Ok(fetched)
    }
}

async fn successful(response: reqwest::Response) -> Result<reqwest::Response, String> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<lockstep_proto::agent::ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    Err(format!("the controller answered {status}: {message}"))
}

/// How many of the index's frames `file` holds whole and right, from its start.
async fn whole_frames_in(file: &mut tokio::fs::File, index: &FrameIndex) -> std::io::Result<usize> {
    let length = file.metadata().await?.len();
    let mut whole = 0;
    for (offset, frame) in index.with_offsets() {
        if offset + frame.length > length {
            break;
        }
        let mut bytes = vec![0; frame.length as usize];
        file.seek(SeekFrom::Start(offset)).await?;
        file.read_exact(&mut bytes).await?;
        if frame_hash(&bytes) != frame.hash {
            break;
        }
        whole += 1;
    }
    Ok(whole)
}

/// Where each frame of the held images is: its file and offset, by hash.
fn frames_held(held: &[HeldImage]) -> HashMap<&str, (&Path, u64, u64)> {
    let mut local = HashMap::new();
    for image in held {
        for (offset, frame) in image.frames.with_offsets() {
            local.insert(
                frame.hash.as_str(),
                (image.file.as_path(), offset, frame.length),
            );
        }
    }
    local
}

/// The frame's bytes from a held image, if one has it and they match its hash (a held file
/// changed on disk is no source).
async fn copy_held(local: &HashMap<&str, (&Path, u64, u64)>, frame: &Frame) -> Option<Vec<u8>> {
    let &(path, offset, length) = local.get(frame.hash.as_str())?;
    if length != frame.length {
        return None;
    }
    let mut file = tokio::fs::File::open(path).await.ok()?;
    file.seek(SeekFrom::Start(offset)).await.ok()?;
    let mut bytes = vec![0; length as usize];
    file.read_exact(&mut bytes).await.ok()?;
    (frame_hash(&bytes) == frame.hash).then_some(bytes)
}
