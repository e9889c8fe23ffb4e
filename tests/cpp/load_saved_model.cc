// Loads a SavedModel with TensorFlow's C++ loader, the one TF Serving calls,
// and runs one of its signatures from several threads on one session.
//
//   load_saved_model <saved_model_dir> <signature> <inputs.tfrecord>
//                    <threads> <calls_per_thread> <outputs.tfrecord>
//
// Both files are TFRecord files of tensorflow.NamedTensorProto, TensorFlow's
// own formats, so Python writes and reads them with tf.io and tf.make_ndarray
// and nothing is lost in a text conversion. An input record is named for the
// signature's input key ("examples"); an output record is named
// "<thread>/<call>/<output key>", one per output of every call, so the test
// sees what each thread got, not only what the first did.
//
// The program also compares, in C++, every call's outputs with the first
// call's, byte for byte, and prints how many matched: equal inputs on one
// session should give equal outputs whichever thread asked.

#include <cstdlib>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/lib/io/record_reader.h"
#include "tensorflow/core/lib/io/record_writer.h"
#include "tensorflow/core/lib/monitoring/collection_registry.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/protobuf/named_tensor.pb.h"
#include "tensorflow/core/public/session.h"

namespace {

// tensorflow::kSavedModelTagServe; the wheel does not ship tag_constants.h.
constexpr char kServeTag[] = "serve";

using OutputsOfCall = std::map<std::string, tensorflow::TensorProto>;

// Why the program stops, on stderr, with a non-zero exit: the test prints it.
[[noreturn]] void Fail(const std::string& what, const tensorflow::Status& status) {
  std::cerr << "load_saved_model: " << what << ": " << status.ToString() << std::endl;
  std::exit(1);
}

[[noreturn]] void Fail(const std::string& what) {
  std::cerr << "load_saved_model: " << what << std::endl;
  std::exit(1);
}

// The input tensors by signature input key, from a TFRecord file of NamedTensorProto.
std::map<std::string, tensorflow::Tensor> ReadInputs(const std::string& path) {
  std::unique_ptr<tensorflow::RandomAccessFile> file;
  tensorflow::Status status = tensorflow::Env::Default()->NewRandomAccessFile(path, &file);
  if (!status.ok()) Fail("cannot open inputs " + path, status);
  tensorflow::io::RecordReader reader(file.get());
  std::map<std::string, tensorflow::Tensor> inputs;
  uint64_t offset = 0;
  tensorflow::tstring record;
  while (true) {
    status = reader.ReadRecord(&offset, &record);
    if (tensorflow::errors::IsOutOfRange(status)) break;
    if (!status.ok()) Fail("cannot read inputs " + path, status);
    tensorflow::NamedTensorProto named;
    if (!named.ParseFromArray(record.data(), record.size())) {
      Fail(path + ": a record is not a NamedTensorProto");
    }
    tensorflow::Tensor tensor;
    if (!tensor.FromProto(named.tensor())) {
      Fail(path + ": input " + named.name() + " is not a valid TensorProto");
    }
    inputs[named.name()] = tensor;
  }
  return inputs;
}

void WriteOutputs(const std::string& path,
                  const std::vector<std::vector<OutputsOfCall>>& outputs_by_thread) {
  std::unique_ptr<tensorflow::WritableFile> file;
  tensorflow::Status status = tensorflow::Env::Default()->NewWritableFile(path, &file);
  if (!status.ok()) Fail("cannot create outputs " + path, status);
  tensorflow::io::RecordWriter writer(file.get());
  for (size_t thread = 0; thread < outputs_by_thread.size(); ++thread) {
    for (size_t call = 0; call < outputs_by_thread[thread].size(); ++call) {
      for (const auto& [key, tensor] : outputs_by_thread[thread][call]) {
        tensorflow::NamedTensorProto named;
        named.set_name(std::to_string(thread) + "/" + std::to_string(call) + "/" + key);
        *named.mutable_tensor() = tensor;
        status = writer.WriteRecord(named.SerializeAsString());
        if (!status.ok()) Fail("cannot write outputs " + path, status);
      }
    }
  }
  status = writer.Close();
  if (status.ok()) status = file->Close();
  if (!status.ok()) Fail("cannot close outputs " + path, status);
}

// The batches TensorFlow's BatchFunction op ran, as it counts them itself
// (batch_resource_base.cc's /tensorflow/serving/batching/processed_batch_size_v2,
// the counter TF Serving exports to Prometheus): "<size>x<count>" for each
// batch size, or "none" for a model with no batched op.
std::string ProcessedBatches() {
  tensorflow::monitoring::CollectionRegistry::CollectMetricsOptions options;
  const std::unique_ptr<tensorflow::monitoring::CollectedMetrics> collected =
      tensorflow::monitoring::CollectionRegistry::Default()->CollectMetrics(options);
  const auto found =
      collected->point_set_map.find("/tensorflow/serving/batching/processed_batch_size_v2");
  std::map<int, int64_t> count_by_size;
  if (found != collected->point_set_map.end()) {
    for (const auto& point : found->second->points) {
      for (const auto& label : point->labels) {
        if (label.name == "batch_size") {
          count_by_size[std::stoi(label.value)] += point->int64_value;
        }
      }
    }
  }
  std::string described;
  for (const auto& [size, count] : count_by_size) {
    described += (described.empty() ? "" : " ") + std::to_string(size) + "x" +
                 std::to_string(count);
  }
  return described.empty() ? "none" : described;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    Fail("usage: load_saved_model <saved_model_dir> <signature> <inputs.tfrecord> "
         "<threads> <calls_per_thread> <outputs.tfrecord>");
  }
  const std::string export_dir = argv[1], signature_name = argv[2];
  const std::string inputs_path = argv[3], outputs_path = argv[6];
  const int thread_count = std::atoi(argv[4]), calls_per_thread = std::atoi(argv[5]);
  if (thread_count < 1 || calls_per_thread < 1) Fail("threads and calls must be at least 1");

  // As TF Serving loads a version: the "serve" tag set, default session options.
  tensorflow::SavedModelBundle bundle;
  tensorflow::Status status = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), export_dir,
      {kServeTag}, &bundle);
  if (!status.ok()) Fail("LoadSavedModel(" + export_dir + ", serve)", status);

  const auto& signature_defs = bundle.meta_graph_def.signature_def();
  const auto found = signature_defs.find(signature_name);
  if (found == signature_defs.end()) Fail(export_dir + ": no signature " + signature_name);
  const tensorflow::SignatureDef& signature = found->second;

  // Feeds by the signature's tensor names; the file must name every input, no more.
  const std::map<std::string, tensorflow::Tensor> inputs = ReadInputs(inputs_path);
  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (const auto& [key, tensor_info] : signature.inputs()) {
    const auto input = inputs.find(key);
    if (input == inputs.end()) Fail(signature_name + " takes input " + key + ", not in the file");
    feeds.emplace_back(tensor_info.name(), input->second);
  }
  if (feeds.size() != inputs.size()) {
    Fail(inputs_path + " has inputs " + signature_name + " does not take");
  }

  // Every output, in key order (a proto map's order is unspecified).
  const std::map<std::string, tensorflow::TensorInfo> output_infos(
      signature.outputs().begin(), signature.outputs().end());
  std::vector<std::string> output_keys, fetches;
  for (const auto& [key, tensor_info] : output_infos) {
    output_keys.push_back(key);
    fetches.push_back(tensor_info.name());
  }

  // Session::Run is thread-safe: every thread calls the one session, as TF
  // Serving's request threads do.
  tensorflow::Session* session = bundle.GetSession();
  std::vector<std::vector<OutputsOfCall>> outputs_by_thread(
      thread_count, std::vector<OutputsOfCall>(calls_per_thread));
  std::vector<tensorflow::Status> status_by_thread(thread_count);
  // The threads wait for one start signal, so their calls overlap rather
  // than run one after another as each thread is created.
  std::promise<void> start;
  const std::shared_future<void> started = start.get_future().share();
  std::vector<std::thread> threads;
  for (int thread = 0; thread < thread_count; ++thread) {
    threads.emplace_back([&, thread] {
      started.wait();
      for (int call = 0; call < calls_per_thread; ++call) {
        std::vector<tensorflow::Tensor> fetched;
        tensorflow::Status run_status = session->Run(feeds, fetches, {}, &fetched);
        if (!run_status.ok()) {
          status_by_thread[thread] = run_status;
          return;
        }
        // AsProtoField (typed repeated fields), not AsProtoTensorContent:
        // TensorFlow's own bytes for strings are a C++ encoding that
        // tf.make_ndarray does not read.
        for (size_t i = 0; i < output_keys.size(); ++i) {
          fetched[i].AsProtoField(&outputs_by_thread[thread][call][output_keys[i]]);
        }
      }
    });
  }
  start.set_value();
  for (std::thread& thread : threads) thread.join();
  for (int thread = 0; thread < thread_count; ++thread) {
    if (!status_by_thread[thread].ok()) {
      Fail("thread " + std::to_string(thread) + ": Session::Run(" + signature_name + ")",
           status_by_thread[thread]);
    }
  }

  // Byte for byte: the same tensor serializes to the same bytes.
  const OutputsOfCall& first_call = outputs_by_thread[0][0];
  int calls_equal_to_first = 0;
  for (const auto& calls : outputs_by_thread) {
    for (const OutputsOfCall& outputs : calls) {
      bool equal = true;
      for (const auto& [key, tensor] : outputs) {
        equal = equal && tensor.SerializeAsString() == first_call.at(key).SerializeAsString();
      }
      calls_equal_to_first += equal;
    }
  }
  WriteOutputs(outputs_path, outputs_by_thread);
  std::cout << "signature " << signature_name << ": " << output_keys.size() << " outputs, "
            << thread_count * calls_per_thread << " calls on " << thread_count
            << " threads, " << calls_equal_to_first << " equal to the first" << std::endl;
  std::cout << "batches run (tiles x batches): " << ProcessedBatches() << std::endl;
  return 0;
}
