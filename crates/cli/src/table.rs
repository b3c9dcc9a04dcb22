//! Bordered, aligned tables in the style of Go's tablewriter, which Praefect uses.

/// Renders `header` and `rows` as:
///
/// ```text
/// +--------------+---------+
/// | Migration    | Applied |
/// +--------------+---------+
/// | 0001_initial | no      |
/// +--------------+---------+
/// ```
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = widths.iter().fold(String::from("+"), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        widths
            .iter()
            .zip(cells)
            .fold(String::from("|"), |mut s, (w, c)| {
                s.push_str(&format!(" {c:<w$} |"));
                s
            })
    };
    let mut out = vec![
        rule.clone(),
        line(&mut header.iter().copied()),
        rule.clone(),
    ];
    out.extend(rows.iter().map(|r| line(&mut r.iter().map(String::as_str))));
    out.push(rule);
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = super::render(
            &["Migration", "Applied"],
            &[vec!["0001_initial".into(), "no".into()]],
        );
        assert_eq!(
            t,
            "+--------------+---------+\n\
             | Migration    | Applied |\n\
             +--------------+---------+\n\
             | 0001_initial | no      |\n\
             +--------------+---------+\n"
        );
    }
}
