// ImageFolder data sets with torchvision's rules, and train/val splits.
//
// A class folder tree `dir/<class>/**/<image>`: classes are the sorted names of the sub-folders, labels their
// index; images are the files (searched recursively, symlinks followed) whose extension, compared
// case-insensitively, is one of torchvision's IMG_EXTENSIONS; samples are sorted as torchvision sorts them
// (by folder path, then file name, byte order). Unlike torchvision, hidden files and folders (names starting
// with '.', e.g. .ipynb_checkpoints) are skipped instead of becoming classes or samples.
// Symlink loops: folder symlinks are followed (as ImageFolder's os.walk(followlinks=True)), but never into a
// folder that is already being scanned higher up the same path (a link to a parent or to itself), nor when the
// link cannot be resolved; those are left out and listed in ImageFolder::not_followed (torchvision recurses
// until the OS reports ELOOP, collecting the same images many times over). A file symlink that loops or dangles
// is a sample like any other file with an image extension (as in torchvision): reading it fails, and
// --on-bad-image decides (fail with its name, or skip and report).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tl::io {

struct Sample {
  std::string path;
  int32_t label = 0;
};

struct ImageFolder {
  std::string root;
  std::vector<std::string> classes;  // label -> class name
  std::vector<Sample> samples;
  std::vector<std::string> not_followed;  // "path: reason" for folder symlinks left out (loops)
  std::vector<int64_t> class_counts() const;
};

// torchvision.datasets.folder.IMG_EXTENSIONS.
const std::vector<std::string>& image_extensions();
bool has_image_extension(const std::string& filename);  // case-insensitive

// Scans a class folder tree. Throws IOError when `dir` is missing or not a folder, has no class folders, or a
// class folder holds no image (all such classes are named).
ImageFolder scan_image_folder(const std::string& dir);

struct DataSplits {
  std::vector<std::string> classes;
  ImageFolder train;
  ImageFolder val;
  std::string description;  // one line for the user: where train and val came from, with counts
};

// The recipe's layout: `root/train` and `root/val`, whose class lists must be equal. Without a val/ folder,
// `val_fraction` (0 < f < 1) of each class of root/train (or of root itself when it has no train/ folder) is
// held out for validation, chosen at random from `seed` (stratified: every class keeps at least one training
// image, and gets at least one val image when it has two or more). val_fraction = 0 means "not requested":
// then a val/ folder is required. Giving both a val/ folder and a fraction is an error.
DataSplits load_splits(const std::string& root, double val_fraction = 0.0, uint64_t seed = 0);

// Stratified split of one folder (used by load_splits): returns {train, val}, each in the folder's sample order.
std::pair<ImageFolder, ImageFolder> stratified_split(const ImageFolder& all, double val_fraction, uint64_t seed);

}  // namespace tl::io
