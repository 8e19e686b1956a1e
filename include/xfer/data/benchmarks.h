#pragma once
/// The standard transfer-learning benchmarks in the layouts their authors distribute, read as they are
/// unpacked (no conversion step): the dataset spec sources `cub`, `aircraft`, `pets`, `dtd`, `flowers`,
/// `cars`, `cifar10` and `cifar100` (docs/benchmarks.md says where each file goes).
///
///   cub       CUB_200_2011/: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/
///   aircraft  fgvc-aircraft-2013b/data/: variants.txt, images_variant_{train,val,trainval,test}.txt, images/
///   pets      annotations/trainval.txt, annotations/test.txt, images/
///   dtd       dtd/: labels/{train,val,test}K.txt (K = fold 1..10), images/
///   flowers   imagelabels.mat, setid.mat (trnid, valid, tstid), jpg/image_NNNNN.jpg
///   cars      devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat (in devkit/
///             or the root), cars_train/, cars_test/
///   cifar10   cifar-10-batches-bin/: data_batch_{1..5}.bin, test_batch.bin, batches.meta.txt
///   cifar100  cifar-100-binary/: train.bin, test.bin, fine_label_names.txt (the fine labels)
///
/// Labels are relabelled 0..K-1 in the layout's class order; class names come from the layout where it
/// has them (Flowers-102 has none: its classes are named by their 1-based label). Every file is hostile
/// input: ids, labels and counts are checked against each other and against the bytes there, paths may
/// not leave the root, and each refusal is one line naming the file and line.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

/// One split of a benchmark.
struct BenchmarkSplit {
  std::vector<std::string> files;  // image files, relative to BenchmarkData::root
  std::vector<int64_t> labels;     // 0-based
  torch::Tensor images;            // in-memory sources (CIFAR): uint8 (N, 3, 32, 32), and `files` is empty
};

struct BenchmarkData {
  std::string root;
  std::vector<std::string> class_names;
  BenchmarkSplit train, val, test;
  bool has_val = false;  // the layout's validation set is the validation split
};

/// The benchmark sources, in the order the help lists them.
const std::vector<std::string>& benchmark_sources();
bool is_benchmark_source(const std::string& source);
/// Whether a benchmark's images are held in memory (CIFAR) rather than decoded from files.
bool benchmark_in_memory(const std::string& source);
/// Whether the layout has a validation set that `split=train` turns into the validation split.
bool benchmark_has_val(const std::string& source);

/// Reads benchmark `source` from `dir`. `split`: "trainval" trains on the layout's training and
/// validation sets together, "train" trains on its training set and validates on its validation set
/// (aircraft, dtd, flowers; the others have one training set). `fold`: DTD's split, 1..10.
BenchmarkData read_benchmark(const std::string& source, const std::string& dir,
                             const std::string& split = "trainval", int64_t fold = 1);

}  // namespace xfer
