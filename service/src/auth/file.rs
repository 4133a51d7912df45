//! The `--auth-file` TOML: `[[principal]]` tables of name, token digest, role and accounts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Accounts, Principal, Role};
use crate::domain::record::validate_account_id;

/// Why an auth file was refused. Never quotes a token (the file holds none) nor a digest.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("cannot read auth file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("auth file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the principal where there is one.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    principal: Vec<RawPrincipal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    token_sha256: String,
    role: Role,
    accounts: Vec<String>,
}

/// A principal and the SHA-256 of its token.
#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    principal: std::sync::Arc<Principal>,
}

/// The principals of one auth file, looked up by token.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    entries: Vec<Entry>,
}

impl AuthFile {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AuthFileError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and validates the text of an auth file.
    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's message quotes the offending line, which may hold a digest: keep only
        // what it says is wrong and where.
        let raw: RawFile = toml::from_str(text).map_err(|error| {
            let at = error
                .span()
                .map(|span| {
                    let line = text.get(..span.start).unwrap_or("").matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            format!("{}{at}", error.message())
        })?;
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut entries = Vec::with_capacity(raw.principal.len());
        for (index, raw) in raw.principal.into_iter().enumerate() {
            let label = if raw.name.is_empty() {
                format!("principal #{}", index + 1)
            } else {
                format!("principal {:?}", raw.name)
            };
            if raw.name.trim().is_empty() || raw.name.chars().any(char::is_control) {
                return Err(format!("{label}: name must be non-empty printable text"));
            }
            if !names.insert(raw.name.clone()) {
                return Err(format!("{label}: name is used twice"));
            }
            let digest = parse_digest(&raw.token_sha256)
                .ok_or_else(|| format!("{label}: token_sha256 must be 64 lower-case hex digits"))?;
            if !digests.insert(digest) {
                return Err(format!(
                    "{label}: token_sha256 is shared with another principal"
                ));
            }
            let accounts =
                parse_accounts(&raw.accounts).map_err(|reason| format!("{label}: {reason}"))?;
            entries.push(Entry {
                digest,
                principal: std::sync::Arc::new(Principal {
                    name: raw.name,
                    role: raw.role,
                    accounts,
                }),
            });
        }
        Ok(Self { entries })
    }

    /// How many principals the file names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file names no principal (then every call is UNAUTHENTICATED).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal holding `token`, if any. The token's digest is compared with every
    /// entry's in constant time, and the loop never stops early, so timing tells nothing
    /// about how much of a digest matched or which entry did.
    pub fn lookup(&self, token: &str) -> Option<std::sync::Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(std::sync::Arc::clone(&entry.principal));
            }
        }
        found
    }
}

/// `token_sha256` as `reqlog hash-token` prints it: lower-case hex SHA-256 of the token.
pub fn token_sha256(token: &str) -> String {
    crate::domain::ip::sha256_hex(token.as_bytes())
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

fn parse_accounts(accounts: &[String]) -> Result<Accounts, String> {
    match accounts {
        [] => Err("accounts must list \"*\" or at least one account id".into()),
        [all] if all == "*" => Ok(Accounts::All),
        ids => {
            if ids.iter().any(|id| id == "*") {
                return Err("accounts: \"*\" must stand alone".into());
            }
            for id in ids {
                validate_account_id("accounts", id).map_err(|violation| violation.to_string())?;
            }
            Ok(Accounts::Only(ids.to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &str) -> Result<AuthFile, String> {
        AuthFile::parse(body)
    }

    fn principal(name: &str, token: &str, role: &str, accounts: &str) -> String {
        format!(
            "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\naccounts = {accounts}\n",
            token_sha256(token)
        )
    }

    #[test]
    fn the_api_md_example_parses_and_looks_up_by_token() {
        let text = principal("edge-gateway", "s3cret", "ingest", "[\"*\"]")
            + &principal("console", "other", "member", "[\"acct_1\", \"acct_2\"]");
        let auth = file(&text).unwrap();
        assert_eq!(auth.len(), 2);
        let gateway = auth.lookup("s3cret").unwrap();
        assert_eq!(gateway.name, "edge-gateway");
        assert_eq!(gateway.role, Role::Ingest);
        assert_eq!(gateway.accounts, Accounts::All);
        let console = auth.lookup("other").unwrap();
        assert_eq!(
            console.accounts,
            Accounts::Only(vec!["acct_1".into(), "acct_2".into()])
        );
        assert!(auth.lookup("s3cre").is_none());
        assert!(auth.lookup("").is_none());
    }

    #[test]
    fn hash_token_is_lower_case_sha256_hex() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason_and_no_digest() {
        let digest = token_sha256("t");
        let cases = [
            (
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"ABC\"\nrole = \"admin\"\naccounts = [\"*\"]\n".to_owned(),
                "token_sha256",
            ),
            (principal("a", "t", "root", "[\"*\"]"), "unknown variant `root`"),
            (principal("a", "t", "admin", "[]"), "accounts"),
            (principal("a", "t", "admin", "[\"*\", \"x\"]"), "stand alone"),
            (principal("a", "t", "admin", "[\"bad id\"]"), "accounts"),
            (principal("a", "t", "admin", "[\"*\"]") + &principal("a", "u", "admin", "[\"*\"]"), "twice"),
            (principal("a", "t", "admin", "[\"*\"]") + &principal("b", "t", "admin", "[\"*\"]"), "shared"),
            (principal("a", "t", "admin", "[\"*\"]") + "extra = 1\n", "extra"),
            (principal("", "t", "admin", "[\"*\"]"), "name"),
        ];
        for (text, expected) in cases {
            let reason = file(&text).expect_err(&text);
            assert!(
                reason.contains(expected),
                "{reason} should mention {expected}"
            );
            assert!(!reason.contains(&digest), "{reason} quotes a digest");
        }
    }

    #[test]
    fn an_empty_file_has_no_principals() {
        assert!(file("").unwrap().is_empty());
    }
}
