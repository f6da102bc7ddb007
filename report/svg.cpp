#include "report/svg.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace deco::report {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Plot-area margins inside a chart: room for the y tick labels on the
// left, the legend on the right, the title above and the x label below.
constexpr int kLeft = 72, kRight = 190, kTop = 34, kBottom = 46;

std::string fixed(double v, int decimals = 1) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// "Nice" tick positions (1, 2 or 5 x 10^k apart) covering [lo, hi].
std::vector<double> linear_ticks(double lo, double hi, int target = 5) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) { step = m * mag; break; }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

// Powers of ten within [lo, hi] (log axis), with 2x and 5x when fewer than three.
std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> ticks;
  const int a = static_cast<int>(std::floor(std::log10(lo))), b = static_cast<int>(std::ceil(std::log10(hi)));
  for (int k = a; k <= b; ++k) {
    const double p = std::pow(10.0, k);
    if (p >= lo * (1 - 1e-9) && p <= hi * (1 + 1e-9)) ticks.push_back(p);
  }
  if (ticks.size() < 3) {
    ticks.clear();
    for (int k = a; k <= b; ++k)
      for (double m : {1.0, 2.0, 5.0}) {
        const double t = m * std::pow(10.0, k);
        if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push_back(t);
      }
  }
  return ticks;
}

struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  // Pixel position of v on an axis running from p0 (at lo) to p1 (at hi).
  double map(double v, double p0, double p1) const {
    const double t = log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                         : (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
  std::vector<double> ticks() const { return log ? log_ticks(lo, hi) : linear_ticks(lo, hi); }
};

bool usable(double v, bool log) { return std::isfinite(v) && (!log || v > 0); }

// The axis range over every usable value, padded a little (linear) and
// never empty.
Axis fit_axis(const std::vector<const std::vector<double>*>& data, const std::vector<double>& extra, bool log,
              bool pad) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  auto take = [&](double v) {
    if (!usable(v, log)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  };
  for (const auto* d : data)
    for (double v : *d) take(v);
  for (double v : extra) take(v);
  Axis a;
  a.log = log;
  if (!std::isfinite(lo)) {
    a.lo = log ? 1 : 0;
    a.hi = log ? 10 : 1;
    return a;
  }
  if (log) {
    if (pad) {
      lo /= 1.15;
      hi *= 1.15;
    }
    // At least a factor of 4, so that some 1-2-5 ticks fall inside.
    if (hi < 4 * lo) {
      const double widen = std::sqrt(4 * lo / hi);
      lo /= widen;
      hi *= widen;
    }
    a.lo = lo;
    a.hi = hi;
  } else {
    if (hi <= lo) {
      const double d = std::abs(lo) > 0 ? std::abs(lo) * 0.1 : 1.0;
      lo -= d;
      hi += d;
    }
    const double p = pad ? (hi - lo) * 0.05 : 0.0;
    a.lo = lo - p;
    a.hi = hi + p;
  }
  return a;
}

std::string tick_label(double v, bool si) { return si ? format_si(v) : format_number(v); }

void open_svg(std::ostringstream& s, const std::string& kind, const std::string& id, int w, int h,
              const std::string& title) {
  s << "<svg class=\"chart " << kind << "\" data-chart=\"" << xml_escape(id) << "\" xmlns=\"http://www.w3.org/2000/svg\""
    << " width=\"" << w << "\" height=\"" << h << "\" viewBox=\"0 0 " << w << ' ' << h << "\" role=\"img\">\n"
    << "<title>" << xml_escape(title) << "</title>\n"
    << "<rect class=\"bg\" x=\"0\" y=\"0\" width=\"" << w << "\" height=\"" << h << "\" fill=\"#ffffff\"/>\n"
    << "<text x=\"" << kLeft << "\" y=\"20\" font-size=\"14\" font-weight=\"600\">" << xml_escape(title)
    << "</text>\n";
}

// viridis, sampled at nine evenly spaced points, interpolated linearly.
std::string viridis(double t) {
  static const std::array<std::array<int, 3>, 9> stops = {{{68, 1, 84},
                                                           {71, 44, 122},
                                                           {59, 81, 139},
                                                           {44, 113, 142},
                                                           {33, 144, 141},
                                                           {39, 173, 129},
                                                           {92, 200, 99},
                                                           {170, 220, 50},
                                                           {253, 231, 37}}};
  t = std::clamp(t, 0.0, 1.0) * (stops.size() - 1);
  const size_t i = std::min(static_cast<size_t>(t), stops.size() - 2);
  const double f = t - static_cast<double>(i);
  char buf[16];
  int c[3];
  for (int k = 0; k < 3; ++k) c[k] = static_cast<int>(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", c[0], c[1], c[2]);
  return buf;
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "n/a" : (value > 0 ? "inf" : "-inf");
  char buf[64];
  const double a = std::abs(value);
  if (a != 0 && (a < 1e-3 || a >= 1e12))
    std::snprintf(buf, sizeof(buf), "%.3g", value);
  else if (a >= 1e4)  // whole numbers rather than 2.828e+04
    std::snprintf(buf, sizeof(buf), "%.0f", value);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", value);
  return buf;
}

std::string format_si(double value) {
  const double a = std::abs(value);
  const char* suffix = "";
  double v = value;
  if (a >= 1e12) { v = value / 1e12; suffix = "T"; }
  else if (a >= 1e9) { v = value / 1e9; suffix = "B"; }
  else if (a >= 1e6) { v = value / 1e6; suffix = "M"; }
  else if (a >= 1e3) { v = value / 1e3; suffix = "K"; }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3g%s", v, suffix);
  return buf;
}

std::string palette_color(size_t index) {
  static const char* colors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                 "#E69F00", "#56B4E9", "#000000", "#999933"};
  return colors[index % (sizeof(colors) / sizeof(colors[0]))];
}

size_t downsample(std::vector<double>& x, std::vector<double>& y, size_t max_points) {
  if (max_points == 0 || x.size() <= max_points) return 1;
  const size_t group = (x.size() + max_points - 1) / max_points;
  std::vector<double> xs, ys;
  for (size_t i = 0; i < x.size(); i += group) {
    double sx = 0, sy = 0;
    size_t n = 0, nx = 0;
    for (size_t j = i; j < std::min(x.size(), i + group); ++j) {
      sx += x[j];
      ++nx;
      if (std::isfinite(y[j])) { sy += y[j]; ++n; }
    }
    xs.push_back(sx / static_cast<double>(nx));
    ys.push_back(n ? sy / static_cast<double>(n) : kNaN);
  }
  x.swap(xs);
  y.swap(ys);
  return group;
}

std::string render(const LineChart& c) {
  std::ostringstream s;
  open_svg(s, "line-chart", c.id, c.width, c.height, c.title);
  const double px0 = kLeft, px1 = c.width - kRight, py0 = c.height - kBottom, py1 = kTop;

  std::vector<const std::vector<double>*> xs, ys;
  for (const auto& ser : c.series) {
    xs.push_back(&ser.x);
    ys.push_back(&ser.y);
  }
  std::vector<double> hl;
  for (const auto& h : c.hlines) hl.push_back(h.y);
  const Axis ax = fit_axis(xs, {}, c.log_x, false), ay = fit_axis(ys, hl, c.log_y, true);

  bool any = false;
  for (const auto& ser : c.series)
    for (size_t i = 0; i < ser.x.size() && !any; ++i) any = usable(ser.x[i], c.log_x) && usable(ser.y[i], c.log_y);

  // Grid and ticks.
  s << "<g class=\"axes\" font-size=\"11\" fill=\"#333\">\n";
  for (double t : ay.ticks()) {
    const double y = ay.map(t, py0, py1);
    s << "<line x1=\"" << px0 << "\" x2=\"" << px1 << "\" y1=\"" << fixed(y) << "\" y2=\"" << fixed(y)
      << "\" stroke=\"#e5e5e5\"/>"
      << "<text x=\"" << px0 - 6 << "\" y=\"" << fixed(y + 4) << "\" text-anchor=\"end\">" << tick_label(t, false)
      << "</text>\n";
  }
  for (double t : ax.ticks()) {
    const double x = ax.map(t, px0, px1);
    s << "<line x1=\"" << fixed(x) << "\" x2=\"" << fixed(x) << "\" y1=\"" << py0 << "\" y2=\"" << py1
      << "\" stroke=\"#f0f0f0\"/>"
      << "<text x=\"" << fixed(x) << "\" y=\"" << py0 + 16 << "\" text-anchor=\"middle\">" << tick_label(t, c.si_x)
      << "</text>\n";
  }
  s << "<rect x=\"" << px0 << "\" y=\"" << py1 << "\" width=\"" << px1 - px0 << "\" height=\"" << py0 - py1
    << "\" fill=\"none\" stroke=\"#999\"/>\n"
    << "<text x=\"" << (px0 + px1) / 2 << "\" y=\"" << c.height - 8 << "\" text-anchor=\"middle\">"
    << xml_escape(c.x_label) << "</text>\n"
    << "<text transform=\"translate(14," << (py0 + py1) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(c.y_label) << "</text>\n</g>\n";

  if (!any)
    s << "<text class=\"no-data\" x=\"" << (px0 + px1) / 2 << "\" y=\"" << (py0 + py1) / 2
      << "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";

  for (const auto& h : c.hlines) {
    if (!usable(h.y, c.log_y)) continue;
    const double y = ay.map(h.y, py0, py1);
    s << "<line class=\"reference\" x1=\"" << px0 << "\" x2=\"" << px1 << "\" y1=\"" << fixed(y) << "\" y2=\""
      << fixed(y) << "\" stroke=\"" << h.color << "\" stroke-dasharray=\"2,3\" stroke-width=\"1.5\"><title>"
      << xml_escape(h.label) << ": " << format_number(h.y) << "</title></line>\n";
  }

  // Series: polylines split at gaps, then markers.
  for (const auto& ser : c.series) {
    s << "<g class=\"series\" data-label=\"" << xml_escape(ser.label) << "\"><title>" << xml_escape(ser.label)
      << "</title>\n";
    std::vector<std::string> runs(1);
    std::ostringstream dots;
    for (size_t i = 0; i < ser.x.size(); ++i) {
      if (!usable(ser.x[i], c.log_x) || !usable(ser.y[i], c.log_y)) {
        if (!runs.back().empty()) runs.emplace_back();
        continue;
      }
      const double x = ax.map(ser.x[i], px0, px1), y = ay.map(ser.y[i], py0, py1);
      runs.back() += fixed(x) + "," + fixed(y) + " ";
      if (ser.markers)
        dots << "<circle cx=\"" << fixed(x) << "\" cy=\"" << fixed(y) << "\" r=\"3\" "
             << (ser.dashed ? "fill=\"#ffffff\" stroke-width=\"1.5\" stroke=\"" : "fill=\"") << ser.color << "\"><title>" << xml_escape(ser.label) << ": " << tick_label(ser.x[i], c.si_x) << ", "
             << format_number(ser.y[i]) << "</title></circle>\n";
    }
    if (ser.line)
      for (const auto& pts : runs)
        if (!pts.empty())
          s << "<polyline fill=\"none\" stroke=\"" << ser.color << "\" stroke-width=\"1.6\""
            << (ser.dashed ? " stroke-dasharray=\"6,4\"" : "") << " points=\"" << pts << "\"/>\n";
    s << dots.str() << "</g>\n";
  }

  // Legend.
  int ly = kTop + 4;
  s << "<g class=\"legend\" font-size=\"11\">\n";
  auto legend_row = [&](const std::string& label, const std::string& color, bool dashed, bool dot) {
    const double lx = px1 + 12;
    if (dot)
      s << "<circle cx=\"" << lx + 11 << "\" cy=\"" << ly << "\" r=\"3\" fill=\"" << color << "\"/>";
    else
      s << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << ly << "\" y2=\"" << ly << "\" stroke=\""
        << color << "\" stroke-width=\"2\"" << (dashed ? " stroke-dasharray=\"4,3\"" : "") << "/>";
    std::string text = label.size() > 26 ? label.substr(0, 25) + "…" : label;
    s << "<text x=\"" << lx + 28 << "\" y=\"" << ly + 4 << "\">" << xml_escape(text) << "<title>"
      << xml_escape(label) << "</title></text>\n";
    ly += 16;
  };
  for (const auto& ser : c.series) legend_row(ser.label, ser.color, ser.dashed, !ser.line);
  for (const auto& h : c.hlines) legend_row(h.label, h.color, true, false);
  s << "</g>\n</svg>\n";
  return s.str();
}

std::string render(const Heatmap& h) {
  std::ostringstream s;
  const int rows = static_cast<int>(h.values.size());
  const int cols = rows ? static_cast<int>(h.values[0].size()) : 0;
  const int height = kTop + std::max(rows, 1) * h.row_height + kBottom + 4;
  open_svg(s, "heatmap", h.id, h.width, height, h.title);
  const double px0 = kLeft, px1 = h.width - kRight, py1 = kTop;
  const double cw = cols ? (px1 - px0) / cols : 0.0;

  double vmin = h.vmin, vmax = h.vmax;
  if (!(vmax > vmin)) {
    vmin -= 0.5;
    vmax += 0.5;
  }
  s << "<g class=\"cells\">\n";
  for (int r = 0; r < rows; ++r) {
    const double y = py1 + r * h.row_height;
    for (int c = 0; c < cols; ++c) {
      const double v = h.values[r][c];
      const std::string color = std::isfinite(v) ? viridis((v - vmin) / (vmax - vmin)) : "#dddddd";
      s << "<rect x=\"" << fixed(px0 + c * cw, 2) << "\" y=\"" << y << "\" width=\"" << fixed(cw + 0.3, 2)
        << "\" height=\"" << h.row_height << "\" fill=\"" << color << "\"><title>"
        << xml_escape(r < static_cast<int>(h.row_labels.size()) ? h.row_labels[r] : "") << ", "
        << xml_escape(c < static_cast<int>(h.col_labels.size()) ? h.col_labels[c] : "") << ": "
        << format_number(v) << "</title></rect>\n";
    }
  }
  s << "</g>\n";
  if (!rows || !cols)
    s << "<text class=\"no-data\" x=\"" << (px0 + px1) / 2 << "\" y=\"" << py1 + 14
      << "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";

  // Row labels (every row while they fit), column labels (about eight).
  s << "<g class=\"axes\" font-size=\"11\" fill=\"#333\">\n";
  const int row_every = std::max(1, 12 / std::max(1, h.row_height));
  for (int r = 0; r < rows; r += row_every)
    s << "<text x=\"" << px0 - 6 << "\" y=\"" << py1 + r * h.row_height + h.row_height / 2 + 4
      << "\" text-anchor=\"end\">" << xml_escape(r < static_cast<int>(h.row_labels.size()) ? h.row_labels[r] : "")
      << "</text>\n";
  const double py0 = py1 + rows * h.row_height;
  const int col_every = std::max(1, (cols + 7) / 8);
  const auto& axis = h.axis_labels.empty() ? h.col_labels : h.axis_labels;
  for (int c = 0; c < cols; c += col_every)
    s << "<text x=\"" << fixed(px0 + (c + 0.5) * cw) << "\" y=\"" << py0 + 15 << "\" text-anchor=\"middle\">"
      << xml_escape(c < static_cast<int>(axis.size()) ? axis[c] : "") << "</text>\n";
  s << "<text x=\"" << (px0 + px1) / 2 << "\" y=\"" << py0 + 34 << "\" text-anchor=\"middle\">"
    << xml_escape(h.x_label) << "</text>\n"
    << "<text transform=\"translate(14," << (py0 + py1) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(h.y_label) << "</text>\n</g>\n";

  // Color bar.
  const double bx = px1 + 16, bh = std::max(60.0, std::min(160.0, py0 - py1));
  s << "<g class=\"colorbar\" font-size=\"11\">\n";
  constexpr int kSteps = 24;
  for (int i = 0; i < kSteps; ++i)
    s << "<rect x=\"" << bx << "\" y=\"" << fixed(py1 + bh * i / kSteps) << "\" width=\"14\" height=\""
      << fixed(bh / kSteps + 0.5) << "\" fill=\"" << viridis(1.0 - (i + 0.5) / kSteps) << "\"/>";
  s << "\n<text x=\"" << bx + 20 << "\" y=\"" << py1 + 9 << "\">" << format_number(vmax) << "</text>"
    << "<text x=\"" << bx + 20 << "\" y=\"" << fixed(py1 + bh) << "\">" << format_number(vmin) << "</text>"
    << "<text x=\"" << bx << "\" y=\"" << fixed(py1 + bh + 16) << "\">" << xml_escape(h.value_label)
    << "</text>\n</g>\n</svg>\n";
  return s.str();
}

}  // namespace deco::report
