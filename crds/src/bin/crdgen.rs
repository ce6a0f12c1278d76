//! Writes the CRD manifests to `crds/manifests/` (or the folder given as the first argument).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests"));
    std::fs::create_dir_all(&dir)?;
    for crd in portcullis_crds::all_crds() {
        let path = dir.join(portcullis_crds::crd_file_name(&crd));
        std::fs::write(&path, portcullis_crds::crd_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
