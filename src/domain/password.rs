//! The dashboard password's stored form: an Argon2id PHC string.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};

/// Hashes `password` with Argon2id and a fresh salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}
