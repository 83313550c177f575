//! A logged-in dashboard session for API tests.

use crate::helpers::TestApp;
use reqwest::blocking::Response;
use serde_json::{json, Value};

/// The password the session helpers set.
pub const PASSWORD: &str = "test-password-1";

/// A session cookie and its CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// Sets the dashboard password and logs in.
pub fn login(app: &TestApp) -> Session {
    app.set_password(PASSWORD);
    let res = app
        .client
        .post(format!("{}/api/login", app.base))
        .json(&json!({ "password": PASSWORD }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = res.json::<Value>().unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    Session { cookie, csrf }
}

impl Session {
    /// `GET path` with the session.
    pub fn get(&self, app: &TestApp, path: &str) -> Response {
        app.client
            .get(format!("{}{path}", app.base))
            .header("Cookie", &self.cookie)
            .send()
            .unwrap()
    }

    /// `POST path` with the session, its CSRF header and a JSON body.
    pub fn post(&self, app: &TestApp, path: &str, body: &Value) -> Response {
        app.client
            .post(format!("{}{path}", app.base))
            .header("Cookie", &self.cookie)
            .header("X-Tally-CSRF", &self.csrf)
            .json(body)
            .send()
            .unwrap()
    }
}
