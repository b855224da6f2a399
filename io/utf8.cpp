// UTF-8 validation, escaping and lossless name lists (see utf8.h).
#include "io/utf8.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tl::io {
namespace {

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when the byte there starts none
// (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
size_t utf8_sequence(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

// Display form; with `reversible`, backslashes are doubled too.
std::string escape(const std::string& s, bool reversible) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    if (n == 0) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(s[i]));
      out += buf;
      ++i;
    } else {
      if (reversible && s[i] == '\\') out += '\\';
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string unescape(const std::string& s, const std::string& source) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '\\') {
      out += '\\';
      ++i;
      continue;
    }
    const int hi = i + 3 < s.size() && s[i + 1] == 'x' ? hex_value(s[i + 2]) : -1;
    const int lo = hi >= 0 ? hex_value(s[i + 3]) : -1;
    TL_CHECK(hi >= 0 && lo >= 0, IOError, source, ": bad escape in the stored name '", s, "'");
    out += static_cast<char>(hi * 16 + lo);
    i += 3;
  }
  return out;
}

}  // namespace

bool is_valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string printable(const std::string& s) { return is_valid_utf8(s) ? s : escape(s, false); }

std::string encode_names(const std::vector<std::string>& names) {
  nlohmann::json a = nlohmann::json::array();
  for (const std::string& n : names) a.push_back(is_valid_utf8(n) ? n : "/" + escape(n, true));
  return a.dump();
}

std::vector<std::string> decode_names(const std::string& json, const std::string& source) {
  nlohmann::json a;
  try {
    a = nlohmann::json::parse(json);
  } catch (const std::exception& e) {
    throw IOError(detail::concat(source, ": the class names are not valid JSON: ", e.what()));
  }
  TL_CHECK(a.is_array(), IOError, source, ": the class names are not a JSON list");
  std::vector<std::string> names;
  for (const auto& v : a) {
    TL_CHECK(v.is_string(), IOError, source, ": a class name is not a string: ", v.dump());
    const std::string s = v.get<std::string>();
    names.push_back(!s.empty() && s[0] == '/' ? unescape(s.substr(1), source) : s);
  }
  return names;
}

void PrintableStreambuf::emit() {
  if (line_.empty()) return;
  const std::string out = printable(line_);
  target_->sputn(out.data(), static_cast<std::streamsize>(out.size()));
  line_.clear();
}

PrintableStreambuf::int_type PrintableStreambuf::overflow(int_type c) {
  if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
  line_ += traits_type::to_char_type(c);
  if (c == '\n' || c == '\r') emit();
  return c;
}

std::streamsize PrintableStreambuf::xsputn(const char* s, std::streamsize n) {
  for (std::streamsize i = 0; i < n; ++i) overflow(traits_type::to_int_type(s[i]));
  return n;
}

int PrintableStreambuf::sync() {
  emit();
  return target_->pubsync();
}

}  // namespace tl::io
