//! The development default configuration, compiled into the binary so that `ultra-gateway`
//! runs anywhere with no file: the same text as `conf/ultra.yaml` and `conf/models.yaml`.

use crate::config::{self, Config, ConfigErrors};
use std::path::Path;

/// Where the embedded files appear in messages.
pub const MAIN: &str = "<embedded>/ultra.yaml";
const MODELS: &str = "<embedded>/models.yaml";

const MAIN_TEXT: &str = include_str!("../conf/ultra.yaml");
const MODELS_TEXT: &str = include_str!("../conf/models.yaml");

/// Loads the embedded development configuration.
pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let read = |p: &Path| match p.to_str() {
        Some(MAIN) => Ok(MAIN_TEXT.to_string()),
        Some(MODELS) => Ok(MODELS_TEXT.to_string()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not embedded",
        )),
    };
    config::load_with(Path::new(MAIN), env, &read)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_default_loads_and_compiles() {
        let c = super::load(&|_| None).unwrap();
        assert_eq!(c.mode, crate::config::Mode::Development);
        assert!(c.models.len() >= 5);
        let (rt, warnings) = crate::runtime::Runtime::compile(&c, &Default::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(rt.servable().iter().all(|s| *s));
    }
}
