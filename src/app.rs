//! The running appliance as one value: configuration, store, sites, ingest
//! pipeline, clock and counters. The HTTP server, the control socket and the
//! CLI's local mode all act on an [`App`]; none keeps global state.

use crate::config::Config;
use crate::domain::site::{self, InvalidInput};
use crate::domain::{Clock, Site, SiteSettings};
use crate::forward;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::{self, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The appliance.
pub struct App {
    /// Resolved configuration.
    pub config: Config,
    /// The DuckDB file.
    pub store: Store,
    /// Sites, as loaded from the store and changed through [`App`].
    pub sites: SiteRegistry,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    ingest: OnceLock<Ingest>,
    ingest_start: Mutex<()>,
    salt: Mutex<Option<(i64, String)>>,
    /// Serializes site changes: the name check and the next id are read
    /// before the insert, and control requests run on several threads.
    site_changes: Mutex<()>,
    /// The dashboard password's generation: a change ends every session.
    pub password_epoch: Arc<AtomicU64>,
    /// Forwarding destinations.
    pub destinations: Arc<forward::Registry>,
    /// Forwarding's delivery counters.
    pub forward_stats: forward::Stats,
    /// Opened by a CLI command while no server runs ([`App::open_local`]):
    /// nothing but that command sends events to the writer.
    pub local: bool,
}

/// A site just created: its one-time secret and the snippet for its pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewSite {
    /// Site name.
    pub name: String,
    /// Public key for the pixel.
    pub site_key: String,
    /// Secret API token; shown once, stored hashed.
    pub api_token: String,
    /// Allowed origins.
    pub origins: Vec<String>,
    /// The two-line HTML snippet for the site's pages.
    pub snippet: String,
}

impl App {
    /// Opens the store in `config.data_dir` and loads the sites. The ingest
    /// pipeline starts on first use (see [`App::ingest`]).
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        config.ensure_data_dir()?;
        let store = Store::open(&config.db_path())?;
        let conn = store.connect()?;
        let sites = SiteRegistry::new(store::sites::list(&conn)?);
        let destinations = Arc::new(forward::Registry::new(store::outbox::destinations(&conn)?));
        drop(conn);
        Ok(App {
            config,
            store,
            sites,
            clock,
            metrics: Arc::new(Metrics::default()),
            ingest: OnceLock::new(),
            ingest_start: Mutex::new(()),
            salt: Mutex::new(None),
            site_changes: Mutex::new(()),
            password_epoch: Arc::default(),
            destinations,
            forward_stats: forward::Stats::default(),
            local: false,
        })
    }

    /// [`App::open`] for one CLI command run on the file while no server
    /// runs (DuckDB's lock on the file keeps a server from starting).
    pub fn open_local(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        Ok(App {
            local: true,
            ..Self::open(config, clock)?
        })
    }

    /// The ingest pipeline, started (index rebuilt) on first call.
    pub fn ingest(&self) -> Result<&Ingest, StoreError> {
        if let Some(i) = self.ingest.get() {
            return Ok(i);
        }
        let _guard = self.ingest_start.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.ingest.get() {
            return Ok(i);
        }
        let sites: Vec<Site> = self.sites.all().iter().map(|s| (**s).clone()).collect();
        let started = Ingest::start(
            &self.store,
            &sites,
            self.clock.clone(),
            self.metrics.clone(),
            self.destinations.clone(),
        )?;
        Ok(self.ingest.get_or_init(|| started))
    }

    /// Drains the ingest queue, commits and checkpoints.
    pub fn shutdown(&self) {
        if let Some(i) = self.ingest.get() {
            i.shutdown();
        }
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(error = %e, "checkpoint at shutdown failed");
        }
    }

    /// Stores a new dashboard password hash and ends every open session.
    pub fn set_password_hash(&self, hash: &str) -> Result<(), StoreError> {
        store::settings::set(&*self.store.connect()?, crate::control::PASSWORD_KEY, hash)?;
        self.password_epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Today's visitor salt (UTC day), from the store on the first use of a day.
    pub fn daily_salt(&self) -> Result<String, StoreError> {
        let day = self.clock.now_secs().div_euclid(86_400);
        let mut cached = self.salt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, salt)) = cached.as_ref() {
            if *d == day {
                return Ok(salt.clone());
            }
        }
        let salt = store::salts::for_day(&*self.store.connect()?, day, site::new_salt)?;
        *cached = Some((day, salt.clone()));
        Ok(salt)
    }

    /// The HTML snippet for a site's pages.
    pub fn snippet(&self, site_key: &str) -> String {
        format!(
            "<script>window.tally=window.tally||{{q:[],track:function(){{this.q.push(arguments)}}}}</script>\n\
             <script defer src=\"{}/tally.js\" data-site=\"{site_key}\"></script>",
            self.public_url()
        )
    }

    /// The configured public URL; when none is configured, the one the server
    /// last served on (so a snippet printed with the server stopped matches).
    pub fn public_url(&self) -> String {
        let served = || {
            let conn = self.store.connect().ok()?;
            store::settings::get(&conn, store::settings::PUBLIC_URL_KEY)
                .ok()
                .flatten()
        };
        match self.config.public_url_is_default {
            true => served().unwrap_or_else(|| self.config.public_url.clone()),
            false => self.config.public_url.clone(),
        }
    }

    /// Creates a site allowed on `origins`.
    pub fn add_site(&self, name: &str, origins: &[String]) -> Result<NewSite, StoreError> {
        site::validate_site_name(name).map_err(invalid)?;
        let origins = normalize_origins(origins)?;
        let token = site::new_api_token();
        let key = site::new_site_key();
        let _serial = self.site_changes.lock().unwrap_or_else(|p| p.into_inner());
        let conn = self.store.connect()?;
        let created = store::sites::insert(
            &conn,
            name,
            &key,
            &site::hash_token(&token),
            &origins,
            self.clock.now_micros(),
        )?;
        self.sites.upsert(created);
        Ok(NewSite {
            name: name.to_owned(),
            snippet: self.snippet(&key),
            site_key: key,
            api_token: token,
            origins,
        })
    }

    /// Issues a new API token for a site; the old one stops working at once.
    pub fn rotate_token(&self, site_ref: &str) -> Result<(Arc<Site>, String), StoreError> {
        let site = self.site(site_ref)?;
        let token = site::new_api_token();
        let hash = site::hash_token(&token);
        store::sites::set_token_hash(&*self.store.connect()?, site.id, &hash)?;
        let updated = Site {
            token_hash: hash,
            ..(*site).clone()
        };
        Ok((self.sites.upsert(updated), token))
    }

    /// Replaces a site's settings and, if given, its origins.
    pub fn configure_site(
        &self,
        site_ref: &str,
        settings: SiteSettings,
        origins: Option<&[String]>,
    ) -> Result<Arc<Site>, StoreError> {
        let site = self.site(site_ref)?;
        let conn = self.store.connect()?;
        let origins = match origins {
            Some(o) => {
                let o = normalize_origins(o)?;
                store::sites::set_origins(&conn, site.id, &o)?;
                o
            }
            None => site.origins.clone(),
        };
        // Rows the rollups count as sealed may be live again under a longer
        // window: they are counted again from the rows.
        let longer_window = settings.window_secs > site.settings.window_secs;
        let _upkeep = longer_window.then(crate::upkeep::lock);
        store::sites::set_settings(&conn, site.id, &settings)?;
        if longer_window {
            store::rollup::clear(&conn, Some(&site.name))?;
        }
        Ok(self.sites.upsert(Site {
            settings,
            origins,
            ..(*site).clone()
        }))
    }

    /// A site by name or site key.
    pub fn site(&self, site_ref: &str) -> Result<Arc<Site>, StoreError> {
        self.sites
            .find(site_ref)
            .ok_or_else(|| StoreError::UnknownSite(site_ref.to_owned()))
    }
}

fn invalid(e: InvalidInput) -> StoreError {
    StoreError::Invalid(e.0)
}

fn normalize_origins(origins: &[String]) -> Result<Vec<String>, StoreError> {
    if origins.is_empty() {
        return Err(StoreError::Invalid(
            "a site needs at least one --origin, e.g. --origin https://shop.example.com".into(),
        ));
    }
    let mut out = Vec::new();
    for o in origins {
        let o = site::normalize_origin(o).map_err(invalid)?;
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// The sites in memory: read on every request, written on rare changes, so a
/// read-write lock around a small vector; a change is visible at once.
#[derive(Debug, Default)]
pub struct SiteRegistry {
    sites: RwLock<Vec<Arc<Site>>>,
}

impl SiteRegistry {
    /// A registry holding `sites`.
    pub fn new(sites: Vec<Site>) -> Self {
        Self {
            sites: RwLock::new(sites.into_iter().map(Arc::new).collect()),
        }
    }

    /// Every site, by id.
    pub fn all(&self) -> Vec<Arc<Site>> {
        self.sites.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A site by name or public key.
    pub fn find(&self, name_or_key: &str) -> Option<Arc<Site>> {
        self.first(|s| s.name == name_or_key || s.site_key == name_or_key)
    }

    /// The site whose public key is `key`.
    pub fn by_key(&self, key: &str) -> Option<Arc<Site>> {
        self.first(|s| s.site_key == key)
    }

    fn first(&self, matches: impl Fn(&Site) -> bool) -> Option<Arc<Site>> {
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        sites.iter().find(|s| matches(s)).cloned()
    }

    /// The site whose API token is `token` (compared in constant time).
    pub fn by_token(&self, token: &str) -> Option<Arc<Site>> {
        let hash = site::hash_token(token);
        self.first(|s| s.token_hash_matches(&hash))
    }

    /// Replaces every site (after a hand-written change to the table).
    pub fn replace_all(&self, sites: Vec<Site>) {
        *self.sites.write().unwrap_or_else(|p| p.into_inner()) =
            sites.into_iter().map(Arc::new).collect();
    }

    /// Adds or replaces (by id) a site.
    pub fn upsert(&self, site: Site) -> Arc<Site> {
        let site = Arc::new(site);
        let mut sites = self.sites.write().unwrap_or_else(|p| p.into_inner());
        match sites.iter_mut().find(|s| s.id == site.id) {
            Some(slot) => *slot = site.clone(),
            None => sites.push(site.clone()),
        }
        site
    }
}
