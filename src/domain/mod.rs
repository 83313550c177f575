//! Pure types and rules, no I/O: what an event is, how it is keyed, what a
//! site allows. Everything past the HTTP and CLI boundaries trusts these types.

pub mod clock;
pub mod event;
pub mod forward;
pub mod key;
pub mod money;
pub mod near_miss;
pub mod password;
pub mod period;
pub mod personal;
pub mod row;
pub mod site;
pub mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{Event, EventError, Fields, Source};
pub use key::KeyHash;
pub use site::{DedupPolicy, Site, SiteSettings};
