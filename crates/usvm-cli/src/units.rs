//! The one place byte counts become text or plotted numbers.

/// Bytes per mebibyte, the unit of the VRAM counters and plots.
const MIB: f64 = (1u64 << 20) as f64;

/// Bytes in the largest binary unit that keeps a number of at least 1, whole when the
/// count is a whole number of that unit and with one decimal otherwise (e.g. "0 B",
/// "512 KiB", "2 MiB", "1.5 GiB").
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    while u + 1 < UNITS.len() && n >= 1 << (10 * (u + 1)) {
        u += 1;
    }
    let v = n as f64 / (1u64 << (10 * u)) as f64;
    if n.is_multiple_of(1 << (10 * u)) {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Bytes as (fractional) mebibytes, for counters and plot axes.
pub fn mib(n: u64) -> f64 {
    n as f64 / MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_picks_the_largest_unit() {
        for (n, want) in [
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (4096 + 2048, "6 KiB"),
            (4097, "4.0 KiB"),
            (512 << 10, "512 KiB"),
            (2 << 20, "2 MiB"),
            (5 << 19, "2.5 MiB"),
            (3 << 29, "1.5 GiB"),
            (256 << 30, "256 GiB"),
            (4096 << 40, "4096 TiB"),
        ] {
            assert_eq!(bytes(n), want, "{n}");
        }
    }

    #[test]
    fn mib_is_fractional() {
        assert_eq!(mib(0), 0.0);
        assert_eq!(mib(3 << 19), 1.5);
    }
}
