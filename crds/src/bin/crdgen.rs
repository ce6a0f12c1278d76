//! Writes the CRD manifests to `crds/manifests/` and the Helm chart's `crds/` folder (or to
//! the one folder given as the first argument).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            crate_dir.join("manifests"),
            crate_dir.join("../charts/portcullis/crds"),
        ],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for crd in portcullis_crds::all_crds() {
            let path = dir.join(portcullis_crds::crd_file_name(&crd));
            std::fs::write(&path, portcullis_crds::crd_yaml(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
