//! `--write-tables FILE`: the run's tables written into a page (`docs/benchmarks.md`), each
//! between its suite's markers, so that one command regenerates them:
//!
//! ```text
//! <!-- idem-bench:postgres -->
//! (replaced by the table of the `postgres` suite)
//! <!-- /idem-bench:postgres -->
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Replaces, in the page at `path`, the text between each block's markers by its content. Every
/// marker pair must be there (the page is left unchanged otherwise).
pub(crate) fn write(path: &Path, blocks: &[(&str, String)]) -> Result<(), String> {
    let page = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let page = replace_blocks(&page, blocks).map_err(|err| format!("{}: {err}", path.display()))?;
    std::fs::write(path, page).map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// `page` with each block's content between its markers.
fn replace_blocks(page: &str, blocks: &[(&str, String)]) -> Result<String, String> {
    let mut page = page.to_owned();
    for (suite, content) in blocks {
        let (open, close) = (
            format!("<!-- idem-bench:{suite} -->"),
            format!("<!-- /idem-bench:{suite} -->"),
        );
        let missing = || {
            format!(
                "no `{open}` ... `{close}` pair for the `{suite}` suite's table: add one, each \
                 marker on a line of its own, where the table belongs"
            )
        };
        let start = page.find(&open).ok_or_else(missing)? + open.len();
        let end = start + page[start..].find(&close).ok_or_else(missing)?;
        page.replace_range(start..end, &format!("\n{}\n", content.trim()));
    }
    Ok(page)
}

/// Today's date (UTC), `YYYY-MM-DD`, for the line that says when the tables were made.
pub(crate) fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_between_their_markers_and_again() {
        let page = "# B\n<!-- idem-bench:memory -->\nold\n<!-- /idem-bench:memory -->\ntail\n";
        let once = replace_blocks(page, &[("memory", "| new |\n".to_owned())]).unwrap();
        assert_eq!(
            once,
            "# B\n<!-- idem-bench:memory -->\n| new |\n<!-- /idem-bench:memory -->\ntail\n"
        );
        let twice = replace_blocks(&once, &[("memory", "| new |".to_owned())]).unwrap();
        assert_eq!(twice, once);
    }

    #[test]
    fn a_missing_marker_is_an_error_that_names_it() {
        let page = "<!-- idem-bench:memory -->\n";
        let err = replace_blocks(page, &[("memory", String::new())]).unwrap_err();
        assert!(err.contains("<!-- /idem-bench:memory -->"), "{err}");
        let err = replace_blocks("", &[("redis", String::new())]).unwrap_err();
        assert!(err.contains("<!-- idem-bench:redis -->"), "{err}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_795), (2026, 12, 8));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
    }
}
