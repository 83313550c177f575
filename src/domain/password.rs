//! The dashboard password's stored form: an Argon2id PHC string.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};

/// Argon2 refused to hash a password.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password")]
pub struct HashError(#[source] argon2::password_hash::Error);

/// Hashes `password` with Argon2id and a fresh salt.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}
