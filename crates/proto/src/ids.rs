//! The names every role gives the same things: an image, and the generation a release opens at.
//! Typed once, where they are read, so that no hop parses them again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The number a release opens at. Every deployment of an environment takes one greater than
/// every generation used before in it (a rollback reopens the previous release at its own), so
/// that a generation names one release. Node routers open at one and say which on every
/// answer; the edge compares them, sending requests only to the routers open at the newest and
/// fetching a cached answer of an older one again before serving it. On the wire it is the bare
/// number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The blake3 hash of an image file, in lowercase hex: the image's name everywhere in Lockstep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(String);

/// A string that is not an image id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an image id (64 lowercase hex digits)")]
pub struct InvalidImageId(pub String);

impl ImageId {
    /// The id of the image whose blake3 hash is `digest`.
    pub fn from_digest(digest: &[u8; 32]) -> ImageId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex = digest
            .iter()
            .flat_map(|byte| [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]])
            .map(char::from)
            .collect();
        ImageId(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, enough to tell images apart in messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ImageId {
    type Error = InvalidImageId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let valid = value.len() == 64
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(ImageId(value))
        } else {
            Err(InvalidImageId(value))
        }
    }
}

impl FromStr for ImageId {
    type Err = InvalidImageId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageId::try_from(s.to_owned())
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_id_is_64_lowercase_hex_digits() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(id.parse::<ImageId>().unwrap().as_str(), id);
        for bad in [
            "",
            "0123",
            &"0123456789ABCDEF".repeat(4),
            &"g".repeat(64),
            &"a".repeat(65),
        ] {
            assert_eq!(bad.parse::<ImageId>(), Err(InvalidImageId(bad.to_owned())));
        }
    }

    #[test]
    fn a_digest_reads_as_its_hex() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x09;
        let id = ImageId::from_digest(&digest);
        assert_eq!(id.as_str(), format!("ab{}09", "00".repeat(30)));
        assert_eq!(id.short(), "ab0000000000");
    }

    #[test]
    fn both_read_and_write_as_before_they_were_typed() {
        let id = "f".repeat(64);
        let json = format!(r#"{{"image":"{id}","generation":7}}"#);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Both {
            image: ImageId,
            generation: Generation,
        }
        let both: Both = serde_json::from_str(&json).unwrap();
        assert_eq!(both.generation, Generation(7));
        assert_eq!(serde_json::to_string(&both).unwrap(), json);
        assert!(serde_json::from_str::<Both>(r#"{"image":"nope","generation":7}"#).is_err());
        assert_eq!(Generation(7).to_string(), "7");
    }
}
