// report/svg.h: the chart primitives of deco report (the whole report is
// checked in a browser by tests/cli/test_report.py).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <regex>
#include <string>

#include "report/svg.h"

using namespace deco::report;

namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("number formatting for axes, tables and tooltips", "[report]") {
  CHECK(format_number(1.23456) == "1.235");
  CHECK(format_number(28285.4) == "28285");
  CHECK(format_number(0.0) == "0");
  CHECK(format_number(2.5e-5) == "2.5e-05");
  CHECK(format_number(std::numeric_limits<double>::quiet_NaN()) == "n/a");
  CHECK(format_si(835000) == "835K");
  CHECK(format_si(1.188e9) == "1.19B");
  CHECK(format_si(614400) == "614K");
  CHECK(format_si(12) == "12");
  CHECK(xml_escape("a<b & \"c\"") == "a&lt;b &amp; &quot;c&quot;");
}

TEST_CASE("downsample averages equal groups and skips NaN", "[report]") {
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7}, y{1, 3, std::nan(""), 5, 2, 4, 9};
  CHECK(downsample(x, y, 3) == 3);
  REQUIRE(x.size() == 3);
  CHECK(x == std::vector<double>{2, 5, 7});
  CHECK(y == std::vector<double>{2, 11.0 / 3.0, 9});  // NaN left out of the first group's mean
  std::vector<double> a{1, 2}, b{3, 4};
  CHECK(downsample(a, b, 10) == 1);
  CHECK(a.size() == 2);
}

TEST_CASE("line chart: polylines split at gaps, legend, reference line, empty chart", "[report]") {
  LineChart c;
  c.id = "t";
  c.title = "T <1>";
  Series s;
  s.label = "run a";
  s.color = "#000";
  s.x = {1, 2, 3, 4, 5};
  s.y = {1, 2, std::nan(""), 4, 5};
  c.series.push_back(s);
  c.hlines.push_back({0.2, "target 0.2", "#c00"});
  const std::string svg = render(c);
  CHECK(svg.find("data-chart=\"t\"") != std::string::npos);
  CHECK(svg.find("T &lt;1&gt;") != std::string::npos);  // titles escaped
  CHECK(count(svg, "<polyline") == 2);                  // the NaN splits the line
  CHECK(count(svg, "class=\"reference\"") == 1);
  CHECK(svg.find(">run a<title>") != std::string::npos);  // legend entry
  CHECK(svg.find("no data") == std::string::npos);
  // Every drawn coordinate lies inside the plot area (72..690 x 34..274).
  const std::regex pt("([0-9.]+),([0-9.]+) ");
  const std::string points = svg.substr(svg.find("points=\""));
  for (auto it = std::sregex_iterator(points.begin(), points.end(), pt); it != std::sregex_iterator(); ++it) {
    const double x = std::stod((*it)[1]), y = std::stod((*it)[2]);
    CHECK((x >= 72 && x <= 690 && y >= 34 && y <= 274));
  }

  LineChart empty;
  empty.id = "e";
  CHECK(render(empty).find("no data") != std::string::npos);
}

TEST_CASE("log axis: ticks fall inside even a narrow range", "[report]") {
  LineChart c;
  c.id = "s";
  c.log_x = true;
  c.si_x = true;
  Series s;
  s.color = "#000";
  s.x = {804000, 835000};
  s.y = {1.47, 1.48};
  c.series.push_back(s);
  const std::string svg = render(c);
  CHECK(svg.find(">500K<") != std::string::npos);
  CHECK(svg.find(">1M<") != std::string::npos);
}

TEST_CASE("heatmap: one cell per value, scale ends at vmin and vmax, NaN gray", "[report]") {
  Heatmap h;
  h.id = "h";
  h.row_labels = {"layer 01", "layer 02"};
  h.col_labels = {"a", "b", "c"};
  h.values = {{0.0, 0.5, 1.0}, {2.0, -1.0, std::nan("")}};
  h.vmin = 0.0;
  h.vmax = 1.0;
  const std::string svg = render(h);
  const std::string cells = svg.substr(svg.find("<g class=\"cells\">"), svg.find("</g>") - svg.find("<g class=\"cells\">"));
  CHECK(count(cells, "<rect") == 6);
  CHECK(count(cells, "fill=\"#440154\"") == 2);  // 0 and -1 (clamped): viridis' dark end
  CHECK(count(cells, "fill=\"#fde725\"") == 2);  // 1 and 2 (clamped): its bright end
  CHECK(count(cells, "fill=\"#dddddd\"") == 1);  // NaN
  CHECK(cells.find("layer 02, b: -1</title>") != std::string::npos);
}
