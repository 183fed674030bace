//! Target `manifest`: the input is the body of a registry's (or an OCI layout's) manifest
//! response, parsed both as an image manifest and as an index, the way the converter, `check`
//! and the layout transport read them ([`Manifest::parse`], [`Index::parse`]).
//!
//! Cross-checks on what parses: the limits hold (entry count, digests, sizes), a platform
//! matches its own name, and the parsed value written back as JSON parses again to the same
//! JSON (nothing accepted is lost or changed by a round trip, which the converter relies on
//! when it rewrites manifests).

use naiad_oci::manifest::{
    digest_hex, Descriptor, Index, Manifest, Platform, MAX_CONFIG_BYTES, MAX_ENTRIES,
};

/// The harness.
pub fn run(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data, "fuzz") {
        assert!(m.layers.len() <= MAX_ENTRIES, "{} layers accepted", m.layers.len());
        assert!(m.config.size <= MAX_CONFIG_BYTES, "config of {} bytes accepted", m.config.size);
        check_descriptor(&m.config);
        m.layers.iter().for_each(check_descriptor);
        let _ = m.bootstrap_layer();
        let json = serde_json::to_vec(&m).expect("a manifest serializes");
        let again = Manifest::parse(&json, "fuzz")
            .unwrap_or_else(|e| panic!("a parsed manifest written back does not parse: {e}"));
        assert_eq!(
            serde_json::to_vec(&again).expect("a manifest serializes"),
            json,
            "a manifest changes through a round trip"
        );
    }
    if let Ok(i) = Index::parse(data, "fuzz") {
        assert!(i.manifests.len() <= MAX_ENTRIES, "{} index entries accepted", i.manifests.len());
        i.manifests.iter().for_each(check_descriptor);
        let json = serde_json::to_vec(&i).expect("an index serializes");
        let again = Index::parse(&json, "fuzz")
            .unwrap_or_else(|e| panic!("a parsed index written back does not parse: {e}"));
        assert_eq!(
            serde_json::to_vec(&again).expect("an index serializes"),
            json,
            "an index changes through a round trip"
        );
    }
}

fn check_descriptor(d: &Descriptor) {
    assert!(digest_hex(&d.digest, "fuzz").is_ok(), "malformed digest {:?} accepted", d.digest);
    assert!(d.size <= 1 << 40, "descriptor of {} bytes accepted", d.size);
    if let Some(p) = &d.platform {
        check_platform(p);
    }
}

/// A platform matches the name it shows, unless a part holds the separator itself.
fn check_platform(p: &Platform) {
    let name = p.name();
    let parts = [Some(&p.os), Some(&p.architecture), p.variant.as_ref()];
    if !parts.iter().flatten().any(|s| s.contains('/')) {
        assert!(p.matches(&name), "platform {name} does not match its own name");
    }
}
