#include "ahead_views.h"

#include <spdlog/spdlog.h>

namespace urunc::bootfs::daemon {

AheadViews::AheadViews(std::chrono::milliseconds hold, Acquire acquire, Mounted mounted)
    : hold_(hold), acquire_(std::move(acquire)), mounted_(std::move(mounted)) {
  worker_ = std::thread([this] { work(); });
}

AheadViews::~AheadViews() {
  stop();
}

void AheadViews::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    while (!entries_.empty()) drop(entries_.begin());
    pending_.clear();
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void AheadViews::drop(std::map<Key, Entry>::iterator it) {
  if (it->second.made) to_release_.push_back(std::move(*it->second.made));
  entries_.erase(it);
  cv_.notify_all();
}

void AheadViews::located(const std::string& address, const std::string& ns, const std::string& id,
                         const Located& where) {
  std::lock_guard lock(mutex_);
  if (stopping_) return;
  Key key{address, ns, id};
  if (auto it = entries_.find(key); it != entries_.end()) drop(it);
  const std::uint64_t generation = ++generation_;
  entries_.emplace(key,
                   Entry{.generation = generation, .where = where, .made = {}, .deadline = {}});
  pending_.emplace_back(std::move(key), generation);
  cv_.notify_all();
}

void AheadViews::forgotten(const std::string& address, const std::string& ns,
                           const std::string& id) {
  std::lock_guard lock(mutex_);
  if (auto it = entries_.find({address, ns, id}); it != entries_.end()) drop(it);
}

void AheadViews::forgotten_all(const std::string& address) {
  std::lock_guard lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto next = std::next(it);
    if (std::get<0>(it->first) == address) drop(it);
    it = next;
  }
}

void AheadViews::handed_over(const std::string& address, const std::string& ns,
                             const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find({address, ns, id});
  if (it == entries_.end()) return;
  if (it->second.made) ++counts_.used;
  drop(it);
}

std::optional<MadeAhead> AheadViews::take(const std::string& address, const std::string& ns,
                                          const std::string& id, const Located& where,
                                          std::chrono::milliseconds timeout) {
  const Key key{address, ns, id};
  std::unique_lock lock(mutex_);
  auto it = entries_.find(key);
  // Being made (neither waiting nor done): it is worth the wait, as the
  // mount would wait for the same view anyway.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (it != entries_.end() && !it->second.where && !it->second.made) {
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) break;
    it = entries_.find(key);
  }
  if (it == entries_.end()) return std::nullopt;
  if (!it->second.made) {
    // Not started (or not done in time): the mount does it itself.
    drop(it);
    return std::nullopt;
  }
  // Made for what the container was: left for handed_over().
  if (it->second.made->where != where) return std::nullopt;
  std::optional<MadeAhead> made = std::move(it->second.made);
  it->second.made.reset();
  ++counts_.used;
  drop(it);
  return made;
}

void AheadViews::used_mount() {
  std::lock_guard lock(mutex_);
  ++counts_.mounts_used;
}

AheadViews::Counts AheadViews::counts() const {
  std::lock_guard lock(mutex_);
  Counts out = counts_;
  out.held = 0;
  for (const auto& [key, entry] : entries_)
    if (entry.made) ++out.held;
  return out;
}

void AheadViews::work() {
  std::unique_lock lock(mutex_);
  while (true) {
    if (!to_release_.empty()) {
      auto held = std::move(to_release_);
      to_release_.clear();
      lock.unlock();
      for (auto& made : held) {
        made.mount.reset();  // its files before the view
        if (auto released = made.view.release(); !released)
          spdlog::error("releasing a view held ahead: {}", released.error().to_string());
      }
      held.clear();
      lock.lock();
      continue;
    }
    if (stopping_) return;

    const auto now = std::chrono::steady_clock::now();
    auto next = std::chrono::steady_clock::time_point::max();
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto following = std::next(it);
      if (it->second.made) {
        if (it->second.deadline <= now) {
          ++counts_.expired;
          spdlog::debug("view held ahead for container {} expired: no mount within {} ms",
                        std::get<2>(it->first), hold_.count());
          drop(it);
        } else {
          next = std::min(next, it->second.deadline);
        }
      }
      it = following;
    }
    if (!to_release_.empty()) continue;

    if (!pending_.empty()) {
      auto [key, generation] = std::move(pending_.front());
      pending_.pop_front();
      auto it = entries_.find(key);
      if (it == entries_.end() || it->second.generation != generation || !it->second.where)
        continue;
      const Located where = *it->second.where;
      it->second.where.reset();
      lock.unlock();
      // Checked before the acquire: a mount that starts after this check
      // hands over (drops this entry) once it holds the view.
      if (mounted_(std::get<0>(key), std::get<1>(key), std::get<2>(key))) {
        lock.lock();
        it = entries_.find(key);
        if (it != entries_.end() && it->second.generation == generation) entries_.erase(it);
        cv_.notify_all();
        continue;
      }
      auto made = acquire_(std::get<0>(key), std::get<1>(key), std::get<2>(key), where);
      lock.lock();
      // A take() may be waiting for this entry, whatever became of it.
      cv_.notify_all();
      it = entries_.find(key);
      const bool wanted = it != entries_.end() && it->second.generation == generation;
      if (!made) {
        ++counts_.failed;
        spdlog::info("no view ahead for container {} ({}): {}", std::get<2>(key), where.parent,
                     made.error().to_string());
        if (wanted) entries_.erase(it);
        continue;
      }
      if (!wanted || stopping_) {
        to_release_.push_back(std::move(*made));
        continue;
      }
      ++counts_.made;
      if (made->mount) ++counts_.mounts_made;
      it->second.made.emplace(std::move(*made));
      it->second.deadline = std::chrono::steady_clock::now() + hold_;
      continue;
    }
    if (next == std::chrono::steady_clock::time_point::max())
      cv_.wait(lock);
    else
      cv_.wait_until(lock, next);
  }
}

}  // namespace urunc::bootfs::daemon
