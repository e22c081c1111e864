//! The screen of `tcptrace top`: keys → [`ViewState`], and one frame drawn from a
//! [`Snapshot`] (header, sortable and filterable table, alerts pane, key help).

use ratatui::{
    crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row as TableRow, Table},
    Frame,
};

use super::model::{AlertLine, GroupKind, Header, Row};
use crate::host::clock::Clock;

/// What the person at the keyboard chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewState {
    pub kind: GroupKind,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// Typing into the filter (after `/`).
    pub editing: bool,
    /// First row shown.
    pub scroll: usize,
    /// Columns the screen shows (keys sort by these only): set as the screen is measured.
    pub shown: usize,
    /// The legend is open (`?`, `h`).
    pub legend: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            kind: GroupKind::Destination,
            sort: Column::ConnPerS,
            descending: true,
            filter: String::new(),
            editing: false,
            scroll: 0,
            shown: Column::shown_in(80),
            legend: false,
        }
    }
}

/// What a key asks of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Redraw,
    Quit,
    Ignored,
}

impl ViewState {
    pub fn handle_key(&mut self, key: KeyEvent) -> KeyOutcome {
        if key.kind == KeyEventKind::Release {
            return KeyOutcome::Ignored;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
            return KeyOutcome::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !ctrl => self.filter.push(c),
                _ => return KeyOutcome::Ignored,
            }
            self.scroll = 0;
            return KeyOutcome::Redraw;
        }
        if self.legend {
            // Any key closes the legend; q still quits.
            self.legend = false;
            return match key.code {
                KeyCode::Char('q' | 'Q') => KeyOutcome::Quit,
                _ => KeyOutcome::Redraw,
            };
        }
        match key.code {
            KeyCode::Char('q' | 'Q') => return KeyOutcome::Quit,
            KeyCode::Char('?' | 'h') => self.legend = true,
            KeyCode::Char('t') | KeyCode::Tab => {
                self.kind = self.kind.toggled();
                self.scroll = 0;
            }
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('r') => self.descending = !self.descending,
            // 1–9 the first nine columns, 0 the tenth: those the screen shows.
            KeyCode::Char(d @ '0'..='9') => {
                let index = (d as usize - '0' as usize + 9) % 10;
                if index >= self.shown {
                    return KeyOutcome::Ignored;
                }
                let column = Column::ALL[index];
                if column == self.sort {
                    self.descending = !self.descending;
                } else {
                    self.sort = column;
                    // Names read best A→Z; numbers largest first.
                    self.descending = column != Column::Endpoint;
                }
            }
            KeyCode::Char('<') | KeyCode::Left => self.shift_sort(self.shown.max(1) - 1),
            KeyCode::Char('>') | KeyCode::Right => self.shift_sort(1),
            KeyCode::Down => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Home => self.scroll = 0,
            _ => return KeyOutcome::Ignored,
        }
        KeyOutcome::Redraw
    }

    fn shift_sort(&mut self, by: usize) {
        let shown = self.shown.clamp(1, Column::ALL.len());
        let at = Column::ALL
            .iter()
            .position(|&c| c == self.sort)
            .unwrap_or(0);
        self.sort = Column::ALL[(at + by) % shown];
        self.descending = self.sort != Column::Endpoint;
    }

    /// The screen is `width` columns wide: keys sort by the columns it shows, and a sort by
    /// a column it no longer shows goes back to CONN/s.
    pub fn fit_width(&mut self, width: u16) {
        self.shown = Column::shown_in(width);
        let sorted_at = Column::ALL.iter().position(|&c| c == self.sort);
        if sorted_at.is_none_or(|at| at >= self.shown) {
            self.sort = Column::ConnPerS;
            self.descending = true;
        }
    }

    /// The rows to show: filtered by the typed text, sorted by the chosen column (ties by
    /// endpoint, so the order is stable between refreshes).
    pub fn arrange(&self, mut rows: Vec<Row>) -> Vec<Row> {
        let needle = self.filter.to_lowercase();
        if !needle.is_empty() {
            rows.retain(|r| Column::Endpoint.cell(r).to_lowercase().contains(&needle));
        }
        rows.sort_by(|a, b| {
            let by = self.sort.compare(a, b);
            let by = if self.descending { by.reverse() } else { by };
            by.then_with(|| Column::Endpoint.compare(a, b))
        });
        rows
    }
}

/// Everything one frame shows.
pub struct Snapshot<'a> {
    pub now_ns: u64,
    pub clock: &'a Clock,
    pub header: &'a Header,
    pub rows: Vec<Row>,
    pub alerts: Vec<&'a AlertLine>,
    pub filters: Option<&'a str>,
}

fn header_lines(s: &Snapshot) -> Vec<Line<'static>> {
    let h = s.header;
    let time = s.clock.time_of_day(s.now_ns).to_string();
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut first = vec![
        Span::styled("tcptrace top ", bold),
        Span::raw(format!("{} ", &time[..8.min(time.len())])),
        Span::raw(format!(
            " transitions/s {:.0}  new flows/s {:.0}  retrans/s {:.1}  lost {}",
            h.transitions_per_s, h.new_flows_per_s, h.retransmits_per_s, h.lost
        )),
    ];
    if h.untracked > 0 {
        first.push(Span::raw(format!("  untracked {}", h.untracked)));
    }
    let open: Vec<String> = h
        .open_by_state
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{} {n}", short_state(state.name())))
        .collect();
    let open = if open.is_empty() {
        "none".to_string()
    } else {
        open.join("  ")
    };
    let mut third = format!(
        "TIME_WAIT {} ({} skipped: tcp_max_tw_buckets full)",
        h.time_wait, h.time_wait_skipped
    );
    // The filters first: on a narrow screen what comes last is cut.
    if let Some(filters) = s.filters {
        third.push_str(&format!("  only {filters}"));
    }
    if let Some(conntrack) = &h.conntrack {
        third.push_str(&format!("  {conntrack}"));
    }
    if let Some(snat) = &h.busiest_snat {
        third.push_str(&format!("  {snat}"));
    }
    // A line of its own, its basis last: on a narrow screen that is what gets cut.
    let fourth = h
        .busiest_forecast
        .clone()
        .unwrap_or_else(|| "busiest forecast: none yet (no TIME_WAIT entered)".into());
    vec![
        Line::from(first),
        Line::from(format!("open: {open}")),
        Line::from(third),
        Line::from(fourth),
    ]
}

fn short_state(name: &'static str) -> &'static str {
    match name {
        "ESTABLISHED" => "ESTAB",
        other => other,
    }
}

/// Draws one frame.
pub fn draw(frame: &mut Frame, view: &ViewState, s: &Snapshot) {
    let [header, table, alerts, help] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(6),
        Constraint::Percentage(40),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(s)), header);
    if view.legend {
        draw_legend(frame, view, table.union(alerts));
    } else {
        draw_table(frame, view, s, table);
        draw_alerts(frame, s, alerts);
    }
    let help_text = if view.editing {
        format!("filter: {}_   (Enter keep, Esc clear)", view.filter)
    } else {
        // The filter in force first: on a narrow screen the keys' reminder is what gets cut.
        let keys = "q quit  t tables  1-9,0 sort  r reverse  / filter  ? legend";
        match view.filter.is_empty() {
            true => keys.to_string(),
            false => format!("[filter: {}]  {keys}", view.filter),
        }
    };
    frame.render_widget(
        Paragraph::new(help_text).style(Style::default().add_modifier(Modifier::REVERSED)),
        help,
    );
}

/// What each column of the table shown holds, with the key that sorts by it.
fn draw_legend(frame: &mut Frame, view: &ViewState, area: Rect) {
    let mut lines = vec![Line::from(Span::styled(
        "columns (any key closes; t switches the table):",
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    for (i, c) in Column::ALL.iter().enumerate() {
        let key = if i < view.shown {
            ((i + 1) % 10).to_string()
        } else {
            "-".into()
        };
        lines.push(Line::from(format!(
            "{key} {:<14} {}",
            c.title(view.kind),
            c.meaning(view.kind)
        )));
    }
    lines.push(Line::from(
        "t cycles: destinations -> local services -> workloads. Columns past the screen's \
         width are shown on wider terminals (and sort there).",
    ));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(Block::default().borders(Borders::TOP).title(" legend ")),
        area,
    );
}

fn draw_table(frame: &mut Frame, view: &ViewState, s: &Snapshot, area: Rect) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let columns: Vec<Column> = Column::ALL[..Column::shown_in(area.width)].to_vec();
    let titles = columns.iter().map(|&c| {
        let mut title = c.title(view.kind).to_string();
        if c == view.sort {
            title.push(if view.descending { '▼' } else { '▲' });
        }
        title
    });
    let header = TableRow::new(titles).style(bold.add_modifier(Modifier::REVERSED));
    // Rows that fit under the block's border and the column titles.
    let visible = usize::from(area.height.saturating_sub(3));
    let scroll = view.scroll.min(s.rows.len().saturating_sub(visible.max(1)));
    let rows = s
        .rows
        .iter()
        .skip(scroll)
        .take(visible)
        .map(|r| TableRow::new(columns.iter().map(|c| c.cell(r))));
    let kind = match view.kind {
        GroupKind::Destination => "destinations",
        GroupKind::Service => "local services",
        GroupKind::Workload => "workloads (pods, containers, units)",
    };
    let title = format!(" {kind}: {} ", s.rows.len());
    let table = Table::new(rows, columns.iter().map(|c| c.width(view.kind)))
        .header(header)
        .column_spacing(1)
        .block(Block::default().borders(Borders::TOP).title(title));
    frame.render_widget(table, area);
}

fn draw_alerts(frame: &mut Frame, s: &Snapshot, area: Rect) {
    // Two lines an alert: when, what and which flow; then what was found.
    let lines: Vec<Line> = s
        .alerts
        .iter()
        .take(usize::from(area.height.saturating_sub(1)) / 2)
        .flat_map(|a| {
            let time = s.clock.time_of_day(a.ts_ns).to_string();
            [
                Line::from(vec![
                    Span::raw(format!("{} ", &time[..8.min(time.len())])),
                    Span::styled(a.kind, Style::default().add_modifier(Modifier::BOLD)),
                    Span::raw(format!(" {}", a.flow)),
                ]),
                Line::from(format!("  {}", a.detail)),
            ]
        })
        .collect();
    let title = format!(" alerts, newest first: {} ", s.alerts.len());
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

#[path = "view_columns.rs"]
mod columns;
pub use columns::Column;

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
