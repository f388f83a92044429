#include "control/units/size.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>

namespace rdmig {

Result<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&] {
    return Error(Code::kInvalidArgument, "bad size '" + std::string(text) +
                                             "': want a number with an optional K, M, G or T");
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0) return bad();
  std::string number(text.substr(0, i));
  char* end = nullptr;
  double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size()) return bad();
  std::string suffix;
  for (char c : text.substr(i))
    suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (suffix.empty() || suffix == "B") {
    mult = 1;
  } else if (suffix == "K" || suffix == "KB" || suffix == "KIB") {
    mult = 1024.0;
  } else if (suffix == "M" || suffix == "MB" || suffix == "MIB") {
    mult = 1024.0 * 1024;
  } else if (suffix == "G" || suffix == "GB" || suffix == "GIB") {
    mult = 1024.0 * 1024 * 1024;
  } else if (suffix == "T" || suffix == "TB" || suffix == "TIB") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return bad();
  }
  double bytes = value * mult;
  if (bytes >= 18446744073709551615.0) return bad();
  if (bytes != std::floor(bytes)) {
    return Error(Code::kInvalidArgument,
                 "size '" + std::string(text) + "' is not a whole number of bytes");
  }
  return static_cast<uint64_t>(bytes);
}

Result<double> ParseRate(std::string_view text) {
  std::string t(text);
  for (const char* per_s : {"/s", "ps"}) {
    if (t.size() > 2 && t.substr(t.size() - 2) == per_s) t.resize(t.size() - 2);
  }
  std::string lower;
  for (char c : t) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.size() > 3 && lower.substr(lower.size() - 3) == "bit") {
    const std::string number = lower.substr(0, lower.size() - 4);
    const char unit = lower[lower.size() - 4];
    const double mult = unit == 'k' ? 1e3 : unit == 'm' ? 1e6 : unit == 'g' ? 1e9 : 0;
    char* end = nullptr;
    const double v = std::strtod(number.c_str(), &end);
    if (mult == 0 || number.empty() || end != number.c_str() + number.size() || v <= 0) {
      return Error(Code::kInvalidArgument,
                   "bad rate '" + std::string(text) + "': want e.g. 100Gbit, 800Mbit or 2G/s");
    }
    return v * mult / 8;
  }
  auto bytes = ParseSize(t);
  if (!bytes.ok()) {
    return Error(Code::kInvalidArgument,
                 "bad rate '" + std::string(text) + "': want e.g. 2G/s, 100MiB/s or 100Gbit");
  }
  return static_cast<double>(*bytes);
}

Result<double> ParseMillis(std::string_view text) {
  std::string t(text);
  double scale = 1;
  if (t.size() > 2 && t.substr(t.size() - 2) == "ms") {
    t.resize(t.size() - 2);
  } else if (!t.empty() && t.back() == 's') {
    t.pop_back();
    scale = 1000;
  }
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || v < 0) {
    return Error(Code::kInvalidArgument,
                 "bad duration '" + std::string(text) + "': want e.g. 500ms or 0.5s");
  }
  return v * scale;
}

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

Result<BlockPath> ParseBlockPath(std::string_view spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == spec.size()) {
    return Error(Code::kInvalidArgument, "bad RAM file '" + std::string(spec) +
                                             "': want BLOCK=PATH (e.g. mem0=/dev/shm/guest.ram)");
  }
  return BlockPath{std::string(spec.substr(0, eq)), std::string(spec.substr(eq + 1))};
}

}  // namespace rdmig
