//! placeholder
pub async fn run(_f: &[std::path::PathBuf], _e: &str) -> anyhow::Result<()> {
    Ok(())
}
