//! `ipRestriction`: deny wins over allow; an empty allow list allows any address.

use std::net::IpAddr;

use portcullis_compiler::config::IpRestrictionConfig;

#[derive(Debug, thiserror::Error)]
#[error("client address is not allowed")]
pub struct IpDenied;

pub fn check(restriction: &IpRestrictionConfig, ip: IpAddr) -> Result<(), IpDenied> {
    if restriction.deny.iter().any(|net| net.contains(&ip)) {
        return Err(IpDenied);
    }
    if !restriction.allow.is_empty() && !restriction.allow.iter().any(|net| net.contains(&ip)) {
        return Err(IpDenied);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deny_wins_and_empty_allow_is_any() {
        let r = IpRestrictionConfig {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        };
        assert!(check(&r, "10.1.2.3".parse().unwrap()).is_ok());
        assert!(check(&r, "10.9.2.3".parse().unwrap()).is_err());
        assert!(check(&r, "11.0.0.1".parse().unwrap()).is_err());
        let open = IpRestrictionConfig {
            allow: vec![],
            deny: vec![],
        };
        assert!(check(&open, "11.0.0.1".parse().unwrap()).is_ok());
    }
}
