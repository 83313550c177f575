//! Pure types and rules, no I/O: what an event is, how it is keyed, what a
//! site allows. Everything past the HTTP and CLI boundaries trusts these types.

pub mod clock;
pub mod event;
pub mod key;
pub mod password;
pub mod site;
pub mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{Event, EventError, Source};
pub use key::KeyHash;
pub use site::{DedupPolicy, Site, SiteSettings};
