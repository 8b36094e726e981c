//! A provider's key ring: round-robin over the usable keys (or one key per caller with
//! `key_affinity: caller`); a 429 cools a key down for the provider's `Retry-After`,
//! `retry-after-ms` or `x-ratelimit-reset-*` (default 30 s); a 401 takes it out until its value
//! changes; a key `file` whose content changes is re-read by the upstream manager.
//!
//! A 429 for exhausted quota (`insufficient_quota` in OpenAI's body) cannot be told apart: the
//! retry is decided on the response header, before the body is read (Pingora writes a header to
//! the client as soon as the hooks let it through). Instead, 429s that say nothing about when to
//! come back double the key's cooldown each time they follow one another (30 s, 1 min, 2 min ...
//! up to 1 h): a key whose account is out of credit is soon tried only hourly, and comes back by
//! itself once the account is topped up, which "disabled until its value changes" would not do.
//!
//! All keys of one ring must belong to one provider account/project: stored responses, files
//! and fine-tuned models are per project, and a request may move from one key to another.
//!
//! `ring` picks keys and keeps their state; `source` loads values (and re-reads key files);
//! `hints` reads a 429's cooldown from the provider's headers; `key` is a key as it goes on the
//! wire; `quota` the provider's reported limits and the key's use today; `view` is what the
//! provider health endpoint (and the metrics) show.

mod hints;
mod key;
pub mod quota;
mod ring;
mod source;
mod view;

pub use hints::cooldown_from;
pub use key::{ProviderKey, SecretText};
pub use ring::{KeyPick, KeyRing, KeySlot, KeySnapshot, DEFAULT_COOLDOWN};
pub use source::KeySource;
pub use view::KeyView;
