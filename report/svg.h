// Charts as inline SVG text, for the self-contained HTML report
// (report/html_report.h): line charts with a legend and reference lines,
// and heatmaps with a color bar. No scripts and no external resources: the
// SVG is drawn here, so the report opens anywhere, offline, and renders the
// same in every browser. Hovering a series or a cell shows its values (SVG
// <title> elements).
#pragma once

#include <string>
#include <vector>

namespace deco::report {

struct Series {
  std::string label;
  std::vector<double> x, y;   // same length; NaN y values leave a gap
  std::string color;          // CSS color
  bool dashed = false;
  bool line = true;           // a polyline through the points
  bool markers = false;       // a dot at every point (hollow when dashed)
};

struct ReferenceLine {
  double y = 0.0;
  std::string label, color;
};

struct LineChart {
  std::string id;             // the data-chart attribute (what tests and readers look up)
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  bool si_x = false;          // x tick labels as 1.5K, 2M, 3B (token counts, parameters)
  std::vector<Series> series;
  std::vector<ReferenceLine> hlines;
  int width = 880, height = 320;
};

struct Heatmap {
  std::string id, title, x_label, y_label, value_label;
  std::vector<std::string> row_labels;     // top to bottom
  std::vector<std::string> col_labels;     // left to right (hover text)
  std::vector<std::string> axis_labels;    // shorter ones for the axis (default: col_labels); every few are printed
  std::vector<std::vector<double>> values; // [row][col]; NaN: no data (gray)
  // Color scale: values at or below vmin get the first color, at or above
  // vmax the last; equal bounds are widened around the value.
  double vmin = 0.0, vmax = 1.0;
  int width = 880;
  int row_height = 18;
};

std::string render(const LineChart& chart);
std::string render(const Heatmap& heatmap);

// At most `max_points` points: consecutive points averaged in equal groups
// (x and y alike), NaN y values skipped. Returns the group size used.
size_t downsample(std::vector<double>& x, std::vector<double>& y, size_t max_points);

// Text helpers shared with the HTML page.
std::string xml_escape(const std::string& text);
std::string format_number(double value);  // short: 4 significant digits, no trailing zeros
std::string format_si(double value);      // 1.5K, 2M, 3.2B

// Distinct, color-blind friendly line colors (Okabe-Ito), cycling.
std::string palette_color(size_t index);

}  // namespace deco::report
