//! The screen of `tcptrace top`: keys → [`ViewState`], and one frame drawn from a
//! [`Snapshot`] (header, sortable and filterable table, alerts pane, key help).
use std::cmp::Ordering;

use ratatui::{
    crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row as TableRow, Table},
    Frame,
};

use super::model::{AlertLine, GroupKind, Header, Row};
use crate::host::clock::{Clock, HumanDuration};

/// The table's columns, in order (keys 1–9 and 0 sort by them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Endpoint,
    ConnPerS,
    Open,
    TimeWait,
    Forecast,
    Retransmits,
    Resets,
    KeepaliveTimeouts,
    PortFailures,
    ConnectP99,
    Rtt,
    Drops,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Endpoint,
        Column::ConnPerS,
        Column::Open,
        Column::TimeWait,
        Column::Forecast,
        Column::Retransmits,
        Column::Resets,
        Column::KeepaliveTimeouts,
        Column::PortFailures,
        Column::ConnectP99,
        Column::Rtt,
        Column::Drops,
    ];

    fn title(self, kind: GroupKind) -> &'static str {
        match self {
            Column::Endpoint => match kind {
                GroupKind::Destination => "DESTINATION",
                GroupKind::Service => "LOCAL SERVICE",
                GroupKind::Workload => "POD / WORKLOAD",
            },
            Column::ConnPerS => "CONN/s",
            Column::Open => "OPEN",
            Column::TimeWait => "TW",
            // Local services: their listener's accept queue (now/backlog) and drops.
            Column::Forecast => match kind {
                GroupKind::Destination | GroupKind::Workload => "FCST%",
                GroupKind::Service => "ACCQ",
            },
            Column::Retransmits => "RTX",
            Column::Resets => "RST",
            Column::KeepaliveTimeouts => "KA_TO",
            Column::PortFailures => match kind {
                GroupKind::Destination | GroupKind::Workload => "EADDR",
                GroupKind::Service => "DRP/s",
            },
            Column::ConnectP99 => "P99CONN",
            Column::Rtt => "RTT50",
            Column::Drops => "DROP",
        }
    }

    /// Widths: the first ten fill 80 columns (71 of cells and 9 of spacing; 21: the longest
    /// IPv4 endpoint; 8: `P99CONN▼`), RTT and drops follow on wider terminals. A workload's
    /// label gets what the table has to spare.
    fn width(self, kind: GroupKind) -> Constraint {
        Constraint::Length(match self {
            Column::Endpoint if kind == GroupKind::Workload => return Constraint::Min(21),
            Column::Endpoint => 21,
            Column::ConnPerS | Column::Rtt => 7,
            Column::ConnectP99 => 8,
            _ => 5,
        })
    }

    /// The columns a table `width` wide shows: all that fit, in order.
    fn shown(width: u16) -> Vec<Column> {
        let mut used = 0u16;
        Column::ALL
            .into_iter()
            .take_while(|c| {
                let cell = match c.width(GroupKind::Destination) {
                    Constraint::Length(n) => n,
                    _ => 21,
                };
                used += cell + u16::from(used > 0);
                used <= width.max(80)
            })
            .collect()
    }

    fn compare(self, a: &Row, b: &Row) -> Ordering {
        let float = |x: f64, y: f64| x.total_cmp(&y);
        match self {
            Column::Endpoint => a.label.cmp(&b.label).then(a.endpoint.cmp(&b.endpoint)),
            Column::ConnPerS => float(a.conn_per_s, b.conn_per_s),
            Column::Open => a.open.cmp(&b.open),
            Column::TimeWait => a.time_wait.cmp(&b.time_wait),
            Column::Forecast => float(
                a.forecast_pct.unwrap_or(-1.0),
                b.forecast_pct.unwrap_or(-1.0),
            )
            .then(a.listen.map(|l| l.queue).cmp(&b.listen.map(|l| l.queue))),
            Column::Retransmits => a.retransmits.cmp(&b.retransmits),
            Column::Resets => a.resets.cmp(&b.resets),
            Column::KeepaliveTimeouts => a.keepalive_timeouts.cmp(&b.keepalive_timeouts),
            Column::PortFailures => a.port_failures.cmp(&b.port_failures).then(float(
                a.listen.map_or(-1.0, |l| l.drops_per_s),
                b.listen.map_or(-1.0, |l| l.drops_per_s),
            )),
            Column::ConnectP99 => a.connect_p99_ns.cmp(&b.connect_p99_ns),
            Column::Rtt => a.rtt_p50_ns.cmp(&b.rtt_p50_ns),
            Column::Drops => a.drops.cmp(&b.drops),
        }
    }

    fn cell(self, row: &Row) -> String {
        match self {
            Column::Endpoint => match &row.label {
                Some(label) => label.clone(),
                None => row.endpoint.to_string(),
            },
            Column::ConnPerS => format!("{:.1}", row.conn_per_s),
            Column::Open => row.open.to_string(),
            Column::TimeWait => row.time_wait.to_string(),
            Column::Forecast => match (row.listen, row.forecast_pct) {
                (Some(l), _) => {
                    let both = format!("{}/{}", l.queue, l.backlog);
                    if both.len() <= 5 {
                        both
                    } else {
                        format!(
                            "{}%",
                            u64::from(l.queue) * 100 / u64::from(l.backlog.max(1))
                        )
                    }
                }
                (None, Some(p)) if p.is_finite() => format!("{p:.0}"),
                (None, Some(_)) => "inf".into(),
                (None, None) => "-".into(),
            },
            Column::Retransmits => row.retransmits.to_string(),
            Column::Resets => row.resets.to_string(),
            Column::KeepaliveTimeouts => row.keepalive_timeouts.to_string(),
            Column::PortFailures => match row.listen {
                Some(l) => format!("{:.1}", l.drops_per_s),
                None => row.port_failures.to_string(),
            },
            Column::ConnectP99 => row
                .connect_p99_ns
                .map_or("-".into(), |ns| HumanDuration(ns).to_string()),
            Column::Rtt => row
                .rtt_p50_ns
                .map_or("-".into(), |ns| HumanDuration(ns).to_string()),
            Column::Drops => row.drops.to_string(),
        }
    }
}

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
        match key.code {
            KeyCode::Char('q' | 'Q') => return KeyOutcome::Quit,
            KeyCode::Char('t') | KeyCode::Tab => {
                self.kind = self.kind.toggled();
                self.scroll = 0;
            }
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('r') => self.descending = !self.descending,
            // 1–9 the first nine columns, 0 the tenth.
            KeyCode::Char(d @ '0'..='9') => {
                let index = (d as usize - '0' as usize + 9) % 10;
                let column = Column::ALL[index];
                if column == self.sort {
                    self.descending = !self.descending;
                } else {
                    self.sort = column;
                    // Names read best A→Z; numbers largest first.
                    self.descending = column != Column::Endpoint;
                }
            }
            KeyCode::Char('<') | KeyCode::Left => self.shift_sort(Column::ALL.len() - 1),
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
        let at = Column::ALL
            .iter()
            .position(|&c| c == self.sort)
            .unwrap_or(0);
        self.sort = Column::ALL[(at + by) % Column::ALL.len()];
        self.descending = self.sort != Column::Endpoint;
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
    if let Some(filters) = s.filters {
        third.push_str(&format!("  only {filters}"));
    }
    // Last: on a narrow screen the basis of the forecast is what gets cut.
    if let Some(forecast) = &h.busiest_forecast {
        third.push_str(&format!("  {forecast}"));
    }
    vec![
        Line::from(first),
        Line::from(format!("open: {open}")),
        Line::from(third),
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
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Percentage(40),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(s)), header);
    draw_table(frame, view, s, table);
    draw_alerts(frame, s, alerts);
    let help_text = if view.editing {
        format!("filter: {}_   (Enter keep, Esc clear)", view.filter)
    } else {
        let mut text = "q quit  t tables  0-9 sort  r reverse  / filter".to_string();
        if !view.filter.is_empty() {
            text.push_str(&format!("  [filter: {}]", view.filter));
        }
        text
    };
    frame.render_widget(
        Paragraph::new(help_text).style(Style::default().add_modifier(Modifier::REVERSED)),
        help,
    );
}

fn draw_table(frame: &mut Frame, view: &ViewState, s: &Snapshot, area: Rect) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let columns = Column::shown(area.width);
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

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
