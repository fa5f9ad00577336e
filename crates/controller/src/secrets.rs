//! Encryption of sensitive variables at rest: ChaCha20-Poly1305 with a key kept in the data
//! directory (mode 0600). A value is stored as base64 of nonce and ciphertext. The same key
//! gives `PLATFORM_PROJECT_ENTROPY`.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use lockstep_proto::agent::EnvironmentType;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot use the secrets key {path}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a sensitive value cannot be decrypted: the secrets key does not match the one it was stored with"
    )]
    Decrypt,
}

/// Who a `PLATFORM_PROJECT_ENTROPY` is for.
#[derive(Debug, Clone, Copy)]
pub enum EntropyScope {
    Build,
    Runtime(EnvironmentType),
}

pub struct Secrets {
    cipher: ChaCha20Poly1305,
    /// Derived from the key, so that the entropy is stable for the project's life and nothing
    /// else has to be kept.
    entropy_key: [u8; 32],
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl Secrets {
    /// Loads the key at `path`, creating it (readable by its owner only) the first time.
    pub fn open(path: &Path) -> Result<Secrets, SecretError> {
        let error = |source| SecretError::Key {
            path: path.display().to_string(),
            source,
        };
        let key = match std::fs::read(path) {
            Ok(key) if key.len() == 32 => key,
            Ok(_) => {
                return Err(error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the key is not 32 bytes long",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes::<32>().map_err(error)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(error)?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(error)?;
                key.to_vec()
            }
            Err(e) => return Err(error(e)),
        };
        Ok(Secrets {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            entropy_key: blake3::derive_key("lockstep PLATFORM_PROJECT_ENTROPY", &key),
        })
    }

    /// `PLATFORM_PROJECT_ENTROPY`: a random value, stable for the project's life, that apps
    /// derive their own secrets from (Django's `SECRET_KEY`, Drupal's hash salt). Platform.sh
    /// has one per project; Lockstep has one per environment type at runtime, so that code a
    /// development contributor pushes never learns the value production's secrets come from,
    /// and another for builds, so that no image (reused by every environment) holds either.
    pub fn project_entropy(&self, scope: EntropyScope) -> String {
        let scope = match scope {
            EntropyScope::Build => "build",
            EntropyScope::Runtime(kind) => kind.as_str(),
        };
        blake3::keyed_hash(&self.entropy_key, scope.as_bytes())
            .to_hex()
            .to_string()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = random_bytes::<12>().expect("the kernel's random source is readable");
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("encryption in memory cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend(ciphertext);
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }

    pub fn decrypt(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Decrypt)?;
        if bytes.len() < 12 {
            return Err(SecretError::Decrypt);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_the_key_file_is_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("lockstep-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.key");
        let _ = std::fs::remove_file(&path);
        let secrets = Secrets::open(&path).unwrap();
        let sealed = secrets.encrypt("hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            secrets.encrypt("hunter2"),
            "a fresh nonce each time"
        );
        let again = Secrets::open(&path).unwrap();
        assert_eq!(again.decrypt(&sealed).unwrap(), "hunter2");
        let production = EntropyScope::Runtime(EnvironmentType::Production);
        let development = EntropyScope::Runtime(EnvironmentType::Development);
        assert_eq!(
            again.project_entropy(production),
            secrets.project_entropy(production),
            "stable for the project's life"
        );
        let distinct: std::collections::BTreeSet<String> =
            [production, development, EntropyScope::Build]
                .map(|scope| secrets.project_entropy(scope))
                .into();
        assert_eq!(
            distinct.len(),
            3,
            "development code and builds never learn production's"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let dir = std::env::temp_dir().join(format!("lockstep-secrets-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = Secrets::open(&dir.join("secret.key")).unwrap();
        let mut sealed = base64::engine::general_purpose::STANDARD
            .decode(secrets.encrypt("x"))
            .unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
        assert!(matches!(
            secrets.decrypt(&sealed),
            Err(SecretError::Decrypt)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
