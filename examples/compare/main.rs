//! The model comparison (first cut: nop only).

mod nop;

use ringport::Backend;
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let dur = Duration::from_secs(2);
    if let Some(which) = std::env::args().nth(1) {
        let r = match which.as_str() {
            "raw" => nop::raw_uring(32, dur)?,
            _ => nop::driver(Backend::Uring, 32, dur)?,
        };
        println!(
            "{which}: {:.2} Mops/s ({:.0} ops)",
            r / 1e6,
            r * dur.as_secs_f64()
        );
        return Ok(());
    }
    for batch in [1usize, 32] {
        let raw = nop::raw_uring(batch, dur)?;
        let drv = nop::driver(Backend::Uring, batch, dur)?;
        let rt = nop::runtime(Backend::Uring, batch, dur)?;
        let mut plain = ringport::UringDriver::builder()
            .defer_taskrun(false)
            .build()?;
        let drv_plain = nop::run_driver(&mut plain, batch, dur)?;
        println!("plain-flags driver {:.2}x", drv_plain / raw);
        println!(
            "nop batch {batch:>2}: raw io-uring {:>6.2} Mops/s | driver {:>6.2} Mops/s ({:.2}x) | runtime {:>6.2} Mops/s ({:.2}x)",
            raw / 1e6, drv / 1e6, drv / raw, rt / 1e6, rt / raw
        );
    }
    Ok(())
}
