//! Fails when the committed CRD manifests differ from what the types generate.
//! Regenerate with `cargo run -p portcullis-crds --bin portcullis-crdgen`.

use std::path::Path;

#[test]
fn committed_crd_manifests_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for crd in portcullis_crds::all_crds() {
        let path = dir.join(portcullis_crds::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{} is missing ({e}); run portcullis-crdgen", path.display())
        });
        let generated = portcullis_crds::crd_yaml(&crd).expect("render CRD");
        assert_eq!(
            committed,
            generated,
            "{} is stale: run `cargo run -p portcullis-crds --bin portcullis-crdgen`",
            path.display()
        );
    }
}

#[test]
fn crds_are_structural_without_cel() {
    for crd in portcullis_crds::all_crds() {
        let yaml = portcullis_crds::crd_yaml(&crd).expect("render CRD");
        assert!(
            !yaml.contains("x-kubernetes-validations"),
            "CEL is not allowed"
        );
        assert!(
            !yaml.contains("anyOf") && !yaml.contains("oneOf"),
            "keep schemas structural"
        );
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["portcullis".to_string()][..])
        );
        assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
    }
}
