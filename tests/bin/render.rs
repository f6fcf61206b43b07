//! `./build.sh render`: writes the ready-to-mount Envoy configurations
//! (`deploy/compose/envoy.yaml`, `envoy/example/envoy.yaml`) from
//! `envoy/envoy.yaml` and `envoy/agentplane.json`.

use agentplane_e2e::deploy::{render_profile, COMPOSE, EXAMPLE};
use agentplane_e2e::repo_root;

fn main() -> std::io::Result<()> {
    for p in [COMPOSE, EXAMPLE] {
        let path = repo_root().join(p.out);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, render_profile(&p))?;
        println!("wrote {}", p.out);
    }
    Ok(())
}
