//! `custody bench rotate`: KEK rotation over many subject DEKs, with the file provider or a
//! PKCS#11 token: time and peak memory.
//!
//! A fresh key store under a temporary dir is filled with `--deks` subject keys wrapped under
//! KEK 1 (not timed, wrapped on every core), then one rotation runs as `custody keys
//! rotate-kek` drives it: begin, steps of `--batch` until every key was scanned, finish
//! (verification pass and destruction of KEK 1). Peak memory is the process's VmHWM, reset
//! after setup so it is the rotation's own.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use custody_core::SubjectId;
use custody_crypto::{DataKey, FileKeyProvider, KeyProvider};
use custody_server::KeyProviderConfig;
use custody_vault::{KeyStore, RedbStore, Vault, WrappedKey};

use crate::Format;
use crate::config::Settings;

/// Which provider wraps the DEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchProvider {
    /// A KEK file in the temporary dir.
    File,
    /// The configured PKCS#11 token (`pkcs11_module`, `pkcs11_token`, CUSTODY_PKCS11_PIN),
    /// with KEKs labelled `custody-bench-<random>-v<n>`.
    Pkcs11,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    /// Subject DEKs to create and rotate
    #[arg(long, default_value_t = 1_000_000)]
    deks: u64,
    /// Who holds the KEK
    #[arg(long, value_enum, default_value_t = BenchProvider::File)]
    provider: BenchProvider,
    /// Subject keys rewrapped per durable step
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); harmless where unsupported.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn provider(settings: &Settings, which: BenchProvider, dir: &std::path::Path) -> anyhow::Result<Arc<dyn KeyProvider>> {
    match which {
        BenchProvider::File => Ok(Arc::new(FileKeyProvider::create(&dir.join("keys/kek"))?)),
        BenchProvider::Pkcs11 => {
            let KeyProviderConfig::Pkcs11(cfg) = &settings.server.key_provider else {
                anyhow::bail!(
                    "--provider pkcs11 needs the PKCS#11 settings: --key-provider pkcs11 --pkcs11-module PATH \
                     --pkcs11-token LABEL and CUSTODY_PKCS11_PIN (for SoftHSM2 also SOFTHSM2_CONF)"
                )
            };
            let mut cfg = cfg.clone();
            cfg.key_label = format!("custody-bench-{:08x}", rand::random::<u32>());
            Ok(Arc::new(custody_hsm::Pkcs11KeyProvider::open(&cfg)?))
        }
    }
}

/// Fills the key store with `n` DEKs wrapped under the provider's KEK, wrapping on every core.
fn setup(store: &RedbStore, provider: &Arc<dyn KeyProvider>, n: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 20_000;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let bar = indicatif::ProgressBar::new(n);
    bar.set_message("wrapping DEKs under KEK 1");
    let mut i = 0u64;
    while i < n {
        let end = (i + CHUNK).min(n);
        let per = (end - i).div_ceil(threads);
        let chunk: Vec<(SubjectId, WrappedKey)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let provider = provider.clone();
                    let (from, to) = ((i + t * per).min(end), (i + (t + 1) * per).min(end));
                    scope.spawn(move || -> anyhow::Result<Vec<(SubjectId, WrappedKey)>> {
                        (from..to)
                            .map(|k| {
                                let subject = SubjectId::new(format!("subject-{k:08}"))?;
                                let ctx =
                                    [b"dek\0".as_slice(), subject.as_str().as_bytes(), b"\0", &1u32.to_be_bytes()]
                                        .concat();
                                let wrapped = provider.wrap(&ctx, &DataKey::generate())?;
                                Ok((subject, WrappedKey { version: 1, wrapped }))
                            })
                            .collect()
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().map_err(|_| anyhow::anyhow!("a setup thread failed"))??);
            }
            Ok::<_, anyhow::Error>(all)
        })?;
        store.insert_subject_keys(&chunk)?;
        i = end;
        bar.set_position(i);
    }
    bar.finish_and_clear();
    Ok(())
}

pub(crate) fn run(settings: &Settings, format: Format, args: RotateArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("cannot make a temporary dir")?;
    let keys_dir = tmp.path().join("keys");
    std::fs::create_dir_all(&keys_dir)?;
    let provider = provider(settings, args.provider, tmp.path())?;
    let store = Arc::new(RedbStore::open(tmp.path(), &keys_dir)?);
    let t = Instant::now();
    setup(&store, &provider, args.deks)?;
    let setup_time = t.elapsed();
    let setup_rss = peak_rss_kib();
    let vault = Vault::new(store.clone(), store, provider.clone())?;
    reset_peak_rss();

    let t = Instant::now();
    let (target, _) = vault.begin_kek_rotation()?;
    let bar =
        if format == Format::Human { indicatif::ProgressBar::new(args.deks) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("rewrapping DEKs under KEK {target}"));
    let mut p = vault.rotate_kek_step(args.batch)?;
    let mut steps = 1u64;
    while !p.scanned_all {
        p = vault.rotate_kek_step(args.batch)?;
        bar.set_position(p.scanned);
        steps += 1;
    }
    let rewrap = t.elapsed();
    let retired = vault.finish_kek_rotation()?;
    let total = t.elapsed();
    bar.finish_and_clear();
    anyhow::ensure!(p.rewrapped == args.deks, "rewrapped {} of {} DEKs", p.rewrapped, args.deks);
    let peak = peak_rss_kib();
    let figures = serde_json::json!({
        "provider": provider.name(),
        "deks": args.deks,
        "batch": args.batch,
        "steps": steps,
        "setup_s": setup_time.as_secs_f64(),
        "rewrap_s": rewrap.as_secs_f64(),
        "total_s": total.as_secs_f64(),
        "deks_per_s": args.deks as f64 / rewrap.as_secs_f64().max(1e-9),
        "retired": retired,
        "peak_rss_mib": peak / 1024,
        "setup_peak_rss_mib": setup_rss / 1024,
    });
    if format == Format::Json {
        println!("{figures}");
    } else {
        println!(
            "KEK rotation, {} provider: {} DEKs rewrapped in {:.2?} ({:.0} DEKs/s, {steps} steps of {}); \
             with the verification pass and KEK 1 destroyed: {:.2?}",
            provider.name(),
            args.deks,
            rewrap,
            args.deks as f64 / rewrap.as_secs_f64().max(1e-9),
            args.batch,
            total
        );
        println!(
            "peak RSS (VmHWM) during the rotation: {} MiB (setup: {:.1?}, peak {} MiB)",
            peak / 1024,
            setup_time,
            setup_rss / 1024
        );
    }
    Ok(())
}
