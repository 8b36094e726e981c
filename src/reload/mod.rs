//! Live configuration: what triggers a reload (SIGHUP, a watched file, the admin endpoint) and
//! the pipeline it runs (load and validate, compile with the carried-over state, warm up, one
//! atomic swap). A reload that fails at any step changes nothing.

pub mod watch;
