//! The interceptor in front of every reqlog service, and the reloadable principal table.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::file::{AuthFile, AuthFileError};
use super::{AuthError, Principal};
use crate::error::Error;

/// Who may call: every caller as `anonymous` (no auth file), or the principals of the auth
/// file, which SIGHUP re-reads.
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Open(Arc<Principal>),
    File {
        path: PathBuf,
        current: RwLock<Arc<AuthFile>>,
    },
}

impl Authenticator {
    /// No auth file: every call is `anonymous` with every right (loopback only).
    pub fn open() -> Self {
        Self {
            mode: Mode::Open(Arc::new(Principal::anonymous())),
        }
    }

    /// Principals from the file at `path`, read now.
    pub fn from_file(path: PathBuf) -> Result<Self, AuthFileError> {
        let file = AuthFile::load(&path)?;
        Ok(Self {
            mode: Mode::File {
                path,
                current: RwLock::new(Arc::new(file)),
            },
        })
    }

    /// Whether calls need a token.
    pub fn is_enforcing(&self) -> bool {
        matches!(self.mode, Mode::File { .. })
    }

    /// Re-reads the auth file. A file that fails to read or validate leaves the current
    /// principals in force: a typo must not lock every gateway out (or let anyone in).
    /// Returns how many principals are now in force.
    pub fn reload(&self) -> Result<usize, AuthFileError> {
        let Mode::File { path, current } = &self.mode else {
            return Ok(0);
        };
        let file = AuthFile::load(path)?;
        let count = file.len();
        *current.write().unwrap_or_else(|poison| poison.into_inner()) = Arc::new(file);
        Ok(count)
    }

    /// The principal of a call's metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, AuthError> {
        let file = match &self.mode {
            Mode::Open(anonymous) => return Ok(Arc::clone(anonymous)),
            Mode::File { current, .. } => {
                Arc::clone(&current.read().unwrap_or_else(|poison| poison.into_inner()))
            }
        };
        let token = bearer_token(metadata)?;
        file.lookup(token)
            .ok_or(AuthError::Unauthenticated("unknown bearer token"))
    }
}

/// The token of `authorization: Bearer <token>`; the scheme is case-insensitive.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::Unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <token>`",
        ))?
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("authorization metadata is not text"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Unauthenticated(
        "authorization metadata must be `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Unauthenticated(
            "authorization metadata must be `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

/// Resolves each call's principal and attaches it to the request for the handler's check.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    authenticator: Arc<Authenticator>,
}

impl AuthInterceptor {
    /// An interceptor consulting `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self
            .authenticator
            .authenticate(request.metadata())
            .map_err(Error::from)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::file::token_sha256;
    use tonic::metadata::MetadataValue;

    fn with_auth(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", MetadataValue::try_from(value).unwrap());
        metadata
    }

    fn authenticator(dir: &tempfile::TempDir, token: &str, name: &str) -> Authenticator {
        let path = dir.path().join("auth.toml");
        write(&path, token, name);
        Authenticator::from_file(path).unwrap()
    }

    fn write(path: &std::path::Path, token: &str, name: &str) {
        std::fs::write(
            path,
            format!(
                "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\naccounts = [\"*\"]\n",
                token_sha256(token)
            ),
        )
        .unwrap();
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir, "tok", "ops");
        assert_eq!(
            auth.authenticate(&with_auth("Bearer tok")).unwrap().name,
            "ops"
        );
        assert_eq!(
            auth.authenticate(&with_auth("bearer tok")).unwrap().name,
            "ops"
        );
        for bad in ["tok", "Basic tok", "Bearer ", "Bearer wrong"] {
            assert!(
                matches!(
                    auth.authenticate(&with_auth(bad)),
                    Err(AuthError::Unauthenticated(_))
                ),
                "{bad}"
            );
        }
        assert!(auth.authenticate(&MetadataMap::new()).is_err());
    }

    #[test]
    fn reload_swaps_principals_and_keeps_them_when_the_new_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir, "old", "ops");
        write(&dir.path().join("auth.toml"), "new", "ops");
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.authenticate(&with_auth("Bearer old")).is_err());
        assert!(auth.authenticate(&with_auth("Bearer new")).is_ok());
        std::fs::write(dir.path().join("auth.toml"), "[[principal]]\nname = 3\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(&with_auth("Bearer new")).is_ok());
    }

    #[test]
    fn without_a_file_everyone_is_anonymous() {
        let auth = Authenticator::open();
        assert_eq!(
            auth.authenticate(&MetadataMap::new()).unwrap().name,
            "anonymous"
        );
    }
}
