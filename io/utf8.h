// File and class names that are not UTF-8 (Linux names are bytes): shown escaped in messages and JSON, stored
// losslessly in weights files and checkpoints.
//
// Display form: like Python's errors="backslashreplace", every byte that is not part of valid UTF-8 becomes the
// four characters \xHH ("caf\xe9"); valid text is unchanged. It is always valid UTF-8, so nlohmann::json can
// dump it, but it is not reversible.
// Stored form of class-name lists (encode_names / decode_names): a JSON array of strings as before; a name that
// is not valid UTF-8 is written as "/" + its escaped form with backslashes doubled. No folder name can contain
// '/', so this is unambiguous and decodes to the exact original bytes.
#pragma once
#include <ostream>
#include <streambuf>
#include <string>
#include <vector>

namespace tl::io {

bool is_valid_utf8(const std::string& s);
// Display form (see above).
std::string printable(const std::string& s);

std::string encode_names(const std::vector<std::string>& names);
// Throws IOError (with `source` in the message) when `json` is not a list of strings.
std::vector<std::string> decode_names(const std::string& json, const std::string& source = "class names");

// An output stream filter that writes printable() text to `target`, one line (or flush) at a time. The CLI puts
// it in front of std::cerr so that every message shows non-UTF-8 names escaped instead of raw bytes.
class PrintableStreambuf : public std::streambuf {
 public:
  explicit PrintableStreambuf(std::streambuf* target) : target_(target) {}
  ~PrintableStreambuf() override { sync(); }
  std::streambuf* target() const { return target_; }

 protected:
  int_type overflow(int_type c) override;
  std::streamsize xsputn(const char* s, std::streamsize n) override;
  int sync() override;

 private:
  void emit();
  std::streambuf* target_;
  std::string line_;
};

}  // namespace tl::io
