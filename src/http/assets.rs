//! Embedded files (the pixel, the dashboard) through one generic handler:
//! MIME type, strong `ETag` from the embedded hash, `304` on
//! `If-None-Match`, and brotli or gzip bodies compressed once, at maximum
//! level, on first use.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use flate2::write::GzEncoder;
use flate2::Compression;
use rust_embed::RustEmbed;
use std::collections::HashMap;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock};

/// The pixel source, embedded as it is.
#[derive(RustEmbed)]
#[folder = "pixel/"]
pub struct Pixel;

/// The dashboard files, embedded as they are.
#[derive(RustEmbed)]
#[folder = "assets/"]
pub struct Dashboard;

/// One embedded file ready to serve.
struct Prepared {
    body: Vec<u8>,
    gzip: Option<Vec<u8>>,
    brotli: Option<Vec<u8>>,
    etag: String,
    mime: &'static str,
}

/// Serves the files of one embedded folder, preparing each on first use.
pub struct StaticFiles<T: RustEmbed> {
    cache: Mutex<HashMap<String, &'static Prepared>>,
    cache_control: &'static str,
    _folder: PhantomData<T>,
}

impl<T: RustEmbed> StaticFiles<T> {
    /// A server for `T`'s files with the given `Cache-Control`.
    pub fn new(cache_control: &'static str) -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            cache_control,
            _folder: PhantomData,
        }
    }

    fn prepared(&self, path: &str) -> Option<&'static Prepared> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(path) {
            return Some(p);
        }
        let file = T::get(path)?;
        let mime = mime_of(path);
        let body = file.data.into_owned();
        let gzip = compressible(mime).then(|| gzip_best(&body));
        let brotli = compressible(mime).then(|| brotli_best(&body));
        let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
        // Embedded files are few and live as long as the process.
        let p: &'static Prepared = Box::leak(Box::new(Prepared {
            body,
            gzip,
            brotli,
            etag,
            mime,
        }));
        cache.insert(path.to_owned(), p);
        Some(p)
    }

    /// The answer for `path`, or `None` when no such file is embedded.
    pub fn respond(&self, req: &HttpRequest, path: &str) -> Option<HttpResponse> {
        let file = self.prepared(path)?;
        let matches = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == file.etag || t.trim() == "*")
            });
        let mut res = if matches {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        res.insert_header((header::ETAG, file.etag.clone()))
            .insert_header((header::CACHE_CONTROL, self.cache_control))
            .insert_header((header::VARY, "Accept-Encoding"));
        if matches {
            return Some(res.finish());
        }
        res.insert_header((header::CONTENT_TYPE, file.mime));
        let (encoding, body) = match (&file.brotli, &file.gzip) {
            (Some(br), _) if accepts(req, "br") => (Some("br"), br),
            (_, Some(gz)) if accepts(req, "gzip") => (Some("gzip"), gz),
            _ => (None, &file.body),
        };
        if let Some(encoding) = encoding {
            res.insert_header((header::CONTENT_ENCODING, HeaderValue::from_static(encoding)));
        }
        Some(res.body(body.clone()))
    }
}

/// Whether `Accept-Encoding` allows `encoding` (and does not give it `q=0`).
fn accepts(req: &HttpRequest, encoding: &str) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name == encoding || name == "*") && !refused
        })
}

/// Gzip at maximum compression.
pub fn gzip_best(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Brotli at maximum quality.
pub fn brotli_best(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
        enc.write_all(data).expect("writing to a Vec cannot fail");
    }
    out
}

fn mime_of(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "js" => "application/javascript",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.contains("javascript")
        || mime.contains("json")
        || mime.contains("svg")
}

/// The pixel, ready to serve, shared by all workers.
pub fn pixel_files() -> &'static StaticFiles<Pixel> {
    static FILES: OnceLock<StaticFiles<Pixel>> = OnceLock::new();
    FILES.get_or_init(|| StaticFiles::new("public, max-age=3600"))
}

/// The dashboard files, ready to serve, shared by all workers.
pub fn dashboard_files() -> &'static StaticFiles<Dashboard> {
    static FILES: OnceLock<StaticFiles<Dashboard>> = OnceLock::new();
    FILES.get_or_init(|| StaticFiles::new("no-cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_fits_its_gzip_budget() {
        let js = Pixel::get("tally.js").expect("pixel/tally.js is embedded");
        let size = gzip_best(&js.data).len();
        assert!(
            size <= 1_536,
            "tally.js is {size} bytes gzipped; the budget is 1,536"
        );
    }
}
