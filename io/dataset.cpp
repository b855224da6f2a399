// ImageFolder scanning and train/val splits (see dataset.h).
#include "io/dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/transforms.h"

namespace fs = std::filesystem;

namespace tl::io {
namespace {

bool is_hidden(const std::string& name) { return !name.empty() && name[0] == '.'; }

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty() || a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string join_names(const std::vector<std::string>& names, size_t max_shown = 20) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) os << (i ? ", " : "") << "'" << names[i] << "'";
  if (names.size() > max_shown) os << " and " << names.size() - max_shown << " more";
  return os.str();
}

// os.walk(dir, followlinks=True), sorted by folder path: every (folder, sorted file names) pair.
// Folders already on the current path (`visited`, canonical) are not entered again: a symlink loop; such folders
// and unresolvable ones are listed in `not_followed`.
void walk(const std::string& dir, std::set<std::string>& visited,
          std::vector<std::pair<std::string, std::vector<std::string>>>& out, std::vector<std::string>& not_followed) {
  std::error_code ec;
  const std::string canonical = fs::canonical(dir, ec).string();
  if (ec) {
    not_followed.push_back(detail::concat(dir, ": ", ec.message()));
    return;
  }
  if (!visited.insert(canonical).second) {
    not_followed.push_back(detail::concat(dir, ": symlink loop (leads back to '", canonical, "')"));
    return;
  }
  std::vector<std::string> files, dirs;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (is_hidden(name)) continue;
    std::error_code type_ec;
    if (fs::is_directory(it->path(), type_ec)) dirs.push_back(name);
    else files.push_back(name);
  }
  if (ec) throw IOError(detail::concat("cannot list folder '", dir, "': ", ec.message()));
  std::sort(files.begin(), files.end());
  out.emplace_back(dir, std::move(files));
  for (const std::string& d : dirs) walk(join_path(dir, d), visited, out, not_followed);
  visited.erase(canonical);  // the same folder may be reached again by another (non-looping) path
}

}  // namespace

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> ext = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                               ".pgm", ".tif",  ".tiff", ".webp"};
  return ext;
}

bool has_image_extension(const std::string& filename) {
  const std::string l = lower(filename);
  for (const std::string& e : image_extensions())
    if (l.size() >= e.size() && l.compare(l.size() - e.size(), e.size(), e) == 0) return true;
  return false;
}

std::vector<int64_t> ImageFolder::class_counts() const {
  std::vector<int64_t> counts(classes.size(), 0);
  for (const Sample& s : samples) ++counts[static_cast<size_t>(s.label)];
  return counts;
}

ImageFolder scan_image_folder(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw IOError(detail::concat("data folder '", dir, "' does not exist"));
  if (!fs::is_directory(dir, ec)) throw IOError(detail::concat("data path '", dir, "' is not a folder"));
  ImageFolder folder;
  folder.root = dir;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (!is_hidden(name) && fs::is_directory(it->path(), type_ec)) folder.classes.push_back(name);
  }
  if (ec) throw IOError(detail::concat("cannot list data folder '", dir, "': ", ec.message()));
  std::sort(folder.classes.begin(), folder.classes.end());
  if (folder.classes.empty())
    throw IOError(detail::concat("data folder '", dir,
                                 "' has no class folders: expected one sub-folder per class, e.g. '",
                                 join_path(dir, "cats/img001.jpg"), "'"));
  std::vector<std::string> empty_classes;
  for (size_t label = 0; label < folder.classes.size(); ++label) {
    std::vector<std::pair<std::string, std::vector<std::string>>> tree;
    std::set<std::string> visited = {fs::canonical(dir, ec).string()};  // a class folder linking to the root loops
    walk(join_path(dir, folder.classes[label]), visited, tree, folder.not_followed);
    std::sort(tree.begin(), tree.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    size_t before = folder.samples.size();
    for (const auto& [sub, files] : tree)
      for (const std::string& f : files)
        if (has_image_extension(f)) folder.samples.push_back({join_path(sub, f), static_cast<int32_t>(label)});
    if (folder.samples.size() == before) empty_classes.push_back(folder.classes[label]);
  }
  if (!empty_classes.empty()) {
    std::string exts;
    for (const std::string& e : image_extensions()) exts += (exts.empty() ? "" : " ") + e;
    throw IOError(detail::concat("data folder '", dir, "': no image files in class folder",
                                 empty_classes.size() > 1 ? "s " : " ", join_names(empty_classes),
                                 " (image extensions: ", exts, "); add images or remove the folder"));
  }
  return folder;
}

std::pair<ImageFolder, ImageFolder> stratified_split(const ImageFolder& all, double val_fraction, uint64_t seed) {
  TL_CHECK(val_fraction > 0.0 && val_fraction < 1.0, ValueError, "the validation fraction must be between 0 and 1 ",
           "(exclusive), got ", val_fraction);
  std::vector<std::vector<size_t>> by_class(all.classes.size());
  for (size_t i = 0; i < all.samples.size(); ++i) by_class[static_cast<size_t>(all.samples[i].label)].push_back(i);
  std::vector<char> is_val(all.samples.size(), 0);
  for (size_t c = 0; c < by_class.size(); ++c) {
    std::vector<size_t>& idx = by_class[c];
    const int64_t n = static_cast<int64_t>(idx.size());
    int64_t n_val = static_cast<int64_t>(std::floor(val_fraction * static_cast<double>(n) + 0.5));
    if (n >= 2) n_val = std::clamp<int64_t>(n_val, 1, n - 1);
    else n_val = 0;
    // Fisher-Yates with a stream of its own per class, so adding a class does not reshuffle the others.
    Rng rng(seed, 0x5B117ULL, c);
    for (int64_t i = n - 1; i > 0; --i) std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(rng.randint(0, i + 1))]);
    for (int64_t i = 0; i < n_val; ++i) is_val[idx[static_cast<size_t>(i)]] = 1;
  }
  ImageFolder train, val;
  train.root = val.root = all.root;
  train.classes = val.classes = all.classes;
  train.not_followed = all.not_followed;
  for (size_t i = 0; i < all.samples.size(); ++i) (is_val[i] ? val : train).samples.push_back(all.samples[i]);
  return {std::move(train), std::move(val)};
}

DataSplits load_splits(const std::string& root, double val_fraction, uint64_t seed) {
  std::error_code ec;
  if (!fs::exists(root, ec)) throw IOError(detail::concat("data folder '", root, "' does not exist"));
  if (!fs::is_directory(root, ec)) throw IOError(detail::concat("data path '", root, "' is not a folder"));
  TL_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, ValueError,
           "the validation fraction must be in [0, 1), got ", val_fraction);
  const std::string train_dir = join_path(root, "train"), val_dir = join_path(root, "val");
  const bool has_train = fs::is_directory(train_dir, ec), has_val = fs::is_directory(val_dir, ec);
  DataSplits s;
  std::ostringstream desc;
  if (has_val) {
    if (!has_train)
      throw IOError(detail::concat("data folder '", root, "' has a val/ folder but no train/ folder"));
    if (val_fraction > 0.0)
      throw ValueError(detail::concat("data folder '", root, "' already has a val/ folder; a validation fraction (",
                                      val_fraction, ") cannot also be used: drop the --val-split option"));
    s.train = scan_image_folder(train_dir);
    s.val = scan_image_folder(val_dir);
    if (s.train.classes != s.val.classes) {
      std::vector<std::string> only_train, only_val;
      std::set_difference(s.train.classes.begin(), s.train.classes.end(), s.val.classes.begin(),
                          s.val.classes.end(), std::back_inserter(only_train));
      std::set_difference(s.val.classes.begin(), s.val.classes.end(), s.train.classes.begin(),
                          s.train.classes.end(), std::back_inserter(only_val));
      std::ostringstream os;
      os << "the class folders of '" << train_dir << "' and '" << val_dir << "' differ:";
      if (!only_train.empty()) os << " only in train/: " << join_names(only_train) << ";";
      if (!only_val.empty()) os << " only in val/: " << join_names(only_val) << ";";
      os << " both need the same class folders (a class may not be missing from val/)";
      throw IOError(os.str());
    }
    desc << "train: " << train_dir << " (" << s.train.samples.size() << " images), val: " << val_dir << " ("
         << s.val.samples.size() << " images), " << s.train.classes.size() << " classes";
  } else {
    const std::string source = has_train ? train_dir : root;
    if (val_fraction <= 0.0)
      throw IOError(detail::concat("data folder '", root, "' has no val/ folder: add '", val_dir,
                                   "' with the same class folders as ", has_train ? "train/" : "the data",
                                   ", or hold out part of the images with --val-split (e.g. 0.2)"));
    ImageFolder all = scan_image_folder(source);
    auto [train, val] = stratified_split(all, val_fraction, seed);
    s.train = std::move(train);
    s.val = std::move(val);
    desc << "train: " << s.train.samples.size() << " images and val: " << s.val.samples.size() << " images ("
         << val_fraction << " of each class, seed " << seed << ") from " << source << ", "
         << all.classes.size() << " classes";
  }
  s.classes = s.train.classes;
  std::vector<std::string> not_followed = s.train.not_followed;
  if (has_val) not_followed.insert(not_followed.end(), s.val.not_followed.begin(), s.val.not_followed.end());
  if (!not_followed.empty())
    desc << "; " << not_followed.size() << " folder symlink" << (not_followed.size() > 1 ? "s" : "")
         << " not followed: " << join_names(not_followed, 5);
  s.description = desc.str();
  return s;
}

}  // namespace tl::io
