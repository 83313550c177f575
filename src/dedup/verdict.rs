//! The rules of SPEC §3 as pure functions: is a copy a duplicate, and if so,
//! which copy is kept.

use super::Entry;
use crate::domain::{DedupPolicy, Source};

/// Seconds within which a later server copy replaces an earlier one under
/// `prefer_pixel`.
pub const SERVER_REPLACE_SECS: u32 = 60;

/// What an arriving copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No live window for its key: a new unique event (opening a new window).
    New,
    /// A copy inside the window of an event already kept.
    Duplicate(Entry),
}

/// What happens to the kept row when a duplicate arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The kept copy stays; the arriving one is dropped (and may fill in
    /// missing properties).
    KeepExisting,
    /// The arriving copy becomes the kept one; the old kept copy is dropped.
    Replace,
}

/// Judges a copy arriving at `now` (seconds) for a key whose index entry is
/// `existing`, under a window of `window_secs` measured from the first arrival.
pub fn judge(existing: Option<Entry>, now: u32, window_secs: u32) -> Verdict {
    match existing {
        Some(e) if now.saturating_sub(e.first_seen) < window_secs => Verdict::Duplicate(e),
        _ => Verdict::New,
    }
}

impl Resolution {
    /// Which copy a site's policy keeps when `incoming` meets a kept copy from
    /// `kept` whose window opened at `first_seen`.
    pub fn of(
        policy: DedupPolicy,
        kept: Source,
        first_seen: u32,
        incoming: Source,
        now: u32,
    ) -> Self {
        match (policy, kept, incoming) {
            (DedupPolicy::PreferPixel, Source::Server, Source::Pixel) => Resolution::Replace,
            (DedupPolicy::PreferPixel, Source::Server, Source::Server)
                if now.saturating_sub(first_seen) <= SERVER_REPLACE_SECS =>
            {
                Resolution::Replace
            }
            _ => Resolution::KeepExisting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_half_open_from_first_arrival() {
        let e = Entry::new(1_000, Source::Server, 2, 0, 0);
        assert_eq!(judge(Some(e), 1_000, 10), Verdict::Duplicate(e));
        assert_eq!(judge(Some(e), 1_009, 10), Verdict::Duplicate(e));
        assert_eq!(judge(Some(e), 1_010, 10), Verdict::New);
        assert_eq!(judge(None, 1_000, 10), Verdict::New);
    }

    #[test]
    fn first_wins_never_replaces() {
        for kept in Source::ALL {
            for incoming in Source::ALL {
                assert_eq!(
                    Resolution::of(DedupPolicy::FirstWins, kept, 0, incoming, 1),
                    Resolution::KeepExisting
                );
            }
        }
    }

    #[test]
    fn prefer_pixel_takes_pixel_over_server_and_late_server_within_a_minute() {
        let p = DedupPolicy::PreferPixel;
        assert_eq!(
            Resolution::of(p, Source::Server, 0, Source::Pixel, 3_000),
            Resolution::Replace
        );
        assert_eq!(
            Resolution::of(p, Source::Pixel, 0, Source::Server, 1),
            Resolution::KeepExisting
        );
        assert_eq!(
            Resolution::of(p, Source::Server, 0, Source::Server, 60),
            Resolution::Replace
        );
        assert_eq!(
            Resolution::of(p, Source::Server, 0, Source::Server, 61),
            Resolution::KeepExisting
        );
    }
}
