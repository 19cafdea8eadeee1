"""Multi-turn rollouts: completions that call tools and answer environments mid-generation.

`MultiTurnEngine` wraps a `GenerationEngine` (our own; the vLLM backend is refused with tools for
now) and generates in rounds:
1. Every completion is sampled as usual (shared-prefix prefill, G per prompt), with `</tool>`
   added to the stop strings while the completion has tool calls left (`rollout.max_tool_calls`).
2. A completion that stopped on `</tool>` has its call run (tools.py; every call of a round runs
   in parallel); one that ended its turn (a stop string or the end-of-turn token) is shown to its
   environment (environments.py), which may answer with feedback. The call's
   `<result>...</result>`, or the feedback, is appended as *observation tokens*: the model attends
   to them, the loss does not train on them (`RolloutBatch.tool_mask`), their log-probs are 0 and
   they never enter an importance ratio.
3. The completions that got an observation continue: each is prefilled once with its prompt,
   what it wrote so far and the observation, and sampled again. Completions that finished wait,
   so a completion that waits for a tool stalls the batch by at most one round.
`rollout.max_new_tokens` bounds the *sampled* tokens of a completion over all its rounds
(observations do not count), and rounds end when no completion has an observation to read.

Token ids are kept as sampled and observations are appended as ids, so the update scores exactly
the sequence the sampler saw (no re-tokenisation of the text). Tool outputs are tokenised with
special tokens split, so a tool printing "<|im_end|>" cannot end the model's turn.

Departures: continuation rounds are not prefix-shared and, under several processes, each process
samples its own continuations (the first round keeps the single-process noise; later rounds do
not), so a multi-process tool run is not bit-identical to a single-process one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .config import RolloutConfig
from .engine import GenerationEngine, RolloutBatch, cut_at_stop
from .environments import Environment
from .errors import ConfigError
from .tools import CALL_CLOSE, CALL_OPEN, Toolbox, ToolCall


@dataclass
class _Episode:
    """One completion being built: its tokens so far and what happened in it."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    observed: list[int] = field(default_factory=list)  # 1 = observation token (tool result, feedback)
    text: str = ""  # sampled segments (each cut at its stop string) and observations
    turn_start: int = 0  # where the current turn starts in `text`
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in `text` of each finished turn
    feedback: list[str] = field(default_factory=list)  # what the environment answered after each finished turn
    sampled: int = 0
    calls: list[ToolCall] = field(default_factory=list)
    turns: int = 1
    verdicts: list[bool] = field(default_factory=list)  # the environment's verdict per turn, when it gives one
    env: Environment | None = None
    truncated: bool = False
    last_text: str = ""  # the text of the last sampled segment
    last_token: int | None = None  # the last sampled token id
    env_error: str | None = None  # what the environment raised, which ended the episode

    def append(self, ids: list[int], observed: bool, logprobs: list[float] | None = None, entropies: list[float] | None = None) -> None:
        """Add sampled tokens (with their log-probs and entropies) or observation tokens (0 for both)."""
        self.ids += ids
        self.observed += [int(observed)] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.entropies += entropies if entropies is not None else [0.0] * len(ids)
        if not observed:
            self.sampled += len(ids)

    def turn_texts(self, prefill: str) -> list[str]:
        """What the model wrote in each turn (its prefill first; tool results inside a turn kept),
        without the environment's feedback."""
        spans = self.turn_spans + [(self.turn_start, len(self.text))]
        return [prefill + self.text[a:b] for a, b in spans]

    def record(self, prefill: str = "") -> dict:
        reward = None
        if self.env is not None and self.env_error is None:
            try:
                reward = self.env.get_reward()
                reward = None if reward is None else float(reward)
            except Exception as e:  # noqa: BLE001 - a broken environment is recorded, not fatal
                self.env_error, reward = f"get_reward: {type(e).__name__}: {e}", None
        return {"tool_calls": [c.to_dict() for c in self.calls], "turns": self.turns, "verdicts": list(self.verdicts),
                "env_reward": reward, "env_error": self.env_error, "turn_texts": self.turn_texts(prefill),
                "feedback": list(self.feedback)}


def feedback_scaffold(tokenizer, template: str, prefill: str) -> tuple[str, str, str]:
    """How environment feedback enters the sequence: (close, before, after) such that the
    observation is close + before + feedback + after. With a chat template, `close` ends the
    assistant's turn and the feedback is a new user turn followed by a new assistant turn (with
    the recipe's prefill); for raw templates it is plain text on its own line."""
    plain = ("", "\n", "\n" + prefill)
    if template != "chat" or not getattr(tokenizer, "chat_template", None):
        return plain
    said, feedback = "\x00ASSISTANT\x00", "\x00FEEDBACK\x00"
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": said}]
    try:
        base = tokenizer.apply_chat_template(messages, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "user", "content": feedback}], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: fall back to plain text
        return plain
    if not full.startswith(base) or base.count(said) != 1 or full[len(base):].count(feedback) != 1:
        return plain
    close = base[base.index(said) + len(said) :]
    before, after = full[len(base) :].split(feedback)
    return close, before, after + prefill


class MultiTurnEngine:
    """A `GenerationEngine` whose completions may call tools and answer an environment."""

    def __init__(self, engine: GenerationEngine, tokenizer, eos_token_ids: list[int], toolbox: Toolbox | None = None,
                 max_tool_calls: int = 0, environment: Callable[[], Environment] | None = None, max_turns: int = 1,
                 template: str = "chat", prefill: str = "", tools_from_turn: int = 1):
        self.engine, self.tokenizer = engine, tokenizer
        self.eos = set(eos_token_ids)
        self.toolbox, self.max_tool_calls = toolbox, max_tool_calls if toolbox is not None else 0
        self.environment, self.max_turns = environment, max_turns if environment is not None else 1
        self.prefill, self.tools_from_turn = prefill, tools_from_turn
        self.close, self.before, self.after = feedback_scaffold(tokenizer, template, prefill) if environment is not None else ("", "", "")

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def model(self):
        return self.engine.model

    @model.setter
    def model(self, value) -> None:
        self.engine.model = value

    def generate(self, prompts: list[list[int]], params: RolloutConfig, generator: torch.Generator | None = None,
                 shard: tuple[int, int] | None = None, problems: list[dict] | None = None) -> RolloutBatch:
        """As `GenerationEngine.generate`; `problems` (one dataset row per prompt) reset the environments."""
        G, N = params.num_generations, len(prompts) * params.num_generations
        episodes = [_Episode(prompt=list(prompts[i // G])) for i in range(N)]
        if self.environment is not None:
            if problems is None or len(problems) != len(prompts):
                raise ValueError("MultiTurnEngine: an environment needs one problem per prompt")
            for i, ep in enumerate(episodes):
                try:
                    ep.env = self.environment()
                    ep.env.reset(**{k: v for k, v in problems[i // G].items() if k != "id"})
                except Exception as e:  # noqa: BLE001 - the episode runs without feedback; the error is recorded
                    ep.env_error = f"reset: {type(e).__name__}: {e}"
        tools_now = self.max_tool_calls > 0 and self.tools_from_turn <= 1
        first = self.engine.generate(prompts, self._round_params(params, params.max_new_tokens, tools_left=tools_now), generator, shard)
        active = list(range(N))
        self._absorb(episodes, active, first, params, self._round_params(params, 0, tools_now).stop)
        while True:
            observations = self._observe(episodes, active, params)  # row -> observation ids
            if not observations:
                break
            active = sorted(observations)
            for i in active:
                episodes[i].append(observations[i], observed=True)
            for tools_left in (True, False):
                rows = [i for i in active if self._tools_left(episodes[i]) == tools_left]
                if not rows:
                    continue
                room = max(params.max_new_tokens - episodes[i].sampled for i in rows)
                round_params = replace(self._round_params(params, room, tools_left), num_generations=1)
                batch = self.engine.generate([episodes[i].prompt + episodes[i].ids for i in rows], round_params, generator)
                self._absorb(episodes, rows, batch, params, round_params.stop)
        return self._assemble(episodes, first)

    def _tools_left(self, ep: _Episode) -> bool:
        """Whether `</tool>` stops this episode's next segment: calls left, in a turn that may use tools."""
        return len(ep.calls) < self.max_tool_calls and ep.turns >= self.tools_from_turn

    def _round_params(self, params: RolloutConfig, max_new_tokens: int, tools_left: bool) -> RolloutConfig:
        stop = list(params.stop) + ([CALL_CLOSE] if tools_left and CALL_CLOSE not in params.stop else [])
        return replace(params, max_new_tokens=max_new_tokens, stop=stop)

    def _absorb(self, episodes: list[_Episode], rows: list[int], batch: RolloutBatch, params: RolloutConfig, stop: list[str]) -> None:
        """Append each row's newly sampled segment, cut to what is left of its token budget. The
        ids keep whatever a token carried past a stop string; the text is cut at it (as the
        single-turn engine does)."""
        for j, i in enumerate(rows):
            ep = episodes[i]
            n = int(batch.lengths[j])
            room = params.max_new_tokens - ep.sampled
            ids = batch.completion_ids[j, :n].tolist()
            cut = n > room
            ids = ids[:room]
            ep.append(ids, observed=False, logprobs=batch.logprobs[j, : len(ids)].tolist(), entropies=batch.entropies[j, : len(ids)].tolist())
            text = batch.texts[j] if not cut else cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
            ep.text += text
            ep.truncated = cut or (bool(batch.truncated[j]) and ep.sampled >= params.max_new_tokens)
            ep.last_token = ids[-1] if ids else None
            ep.last_text = text

    def _observe(self, episodes: list[_Episode], rows: list[int], params: RolloutConfig) -> dict[int, list[int]]:
        """Run the tool calls and environment steps the rows' last segments call for; returns the
        observation ids of each row that continues."""
        calls, feedback = {}, {}
        for i in rows:
            ep = episodes[i]
            if ep.truncated:
                continue
            no_room = ep.sampled >= params.max_new_tokens
            if ep.last_text.endswith(CALL_CLOSE) and self._tools_left(ep):
                ep.truncated = no_room  # a call it has no budget left to read
                if not no_room:
                    calls[i] = self._call_body(ep)
                continue
            if ep.env is not None and ep.env_error is None:
                answer = self._step(ep)
                if answer is not None and ep.turns < self.max_turns and not no_room:
                    feedback[i] = answer
        observations = {}
        if calls:
            rows_called = sorted(i for i in calls if calls[i] is not None)
            ran = dict(zip(rows_called, self.toolbox.run([calls[i] for i in rows_called]))) if rows_called else {}
            for i in sorted(calls):
                call = ran.get(i) or ToolCall(None, "", error=f"no {CALL_OPEN} before {CALL_CLOSE}")
                episodes[i].calls.append(call)
                text = call.result_text()
                episodes[i].text += text
                observations[i] = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
        for i, answer in feedback.items():
            ep = episodes[i]
            close = self.close
            if ep.last_token in self.eos:  # the turn already ended with its end-of-turn token
                ended = self.tokenizer.decode([ep.last_token])
                close = close[len(ended):] if ended and close.startswith(ended) else close
            scaffold = close + self.before
            ep.turn_spans.append((ep.turn_start, len(ep.text)))
            ep.feedback.append(answer)
            ids = self.tokenizer(scaffold, add_special_tokens=False).input_ids
            ids += self.tokenizer(answer, add_special_tokens=False, split_special_tokens=True).input_ids
            ids += self.tokenizer(self.after, add_special_tokens=False).input_ids
            ep.text += scaffold + answer + self.after
            ep.turn_start = len(ep.text)
            ep.turns += 1
            observations[i] = ids
        return observations

    @staticmethod
    def _call_body(ep: _Episode) -> str | None:
        """The text between the last <tool> of the current segment and its closing </tool> (None: no <tool>)."""
        segment_start = len(ep.text) - len(ep.last_text)
        start = ep.text.rfind(CALL_OPEN, segment_start, len(ep.text) - len(CALL_CLOSE))
        return None if start < 0 else ep.text[start + len(CALL_OPEN) : -len(CALL_CLOSE)]

    def _step(self, ep: _Episode) -> str | None:
        """The environment's answer to the turn that just ended (None: the episode is over)."""
        turn = self.prefill + ep.text[ep.turn_start :]
        try:
            answer = ep.env.step(turn)
        except Exception as e:  # noqa: BLE001 - a broken environment ends the episode, recorded
            ep.env_error = f"step: {type(e).__name__}: {e}"
            return None
        verdicts = getattr(ep.env, "verdicts", None)
        if isinstance(verdicts, list):
            ep.verdicts = [bool(v) for v in verdicts]
        return answer if answer is None else str(answer)

    def _assemble(self, episodes: list[_Episode], first: RolloutBatch) -> RolloutBatch:
        """One batch of the finished episodes, with the first round's prompts (already repeated G times)."""
        N = len(episodes)
        pad = self.engine.pad_token_id
        width = max(max((len(ep.ids) for ep in episodes), default=0), 1)
        ids = torch.full((N, width), pad, dtype=torch.long)
        mask, tool_mask = torch.zeros((N, width), dtype=torch.long), torch.zeros((N, width), dtype=torch.long)
        logprobs, entropies = torch.zeros((N, width)), torch.zeros((N, width))
        for i, ep in enumerate(episodes):
            n = len(ep.ids)
            ids[i, :n] = torch.tensor(ep.ids, dtype=torch.long)
            mask[i, :n] = 1
            tool_mask[i, :n] = torch.tensor(ep.observed, dtype=torch.long)
            logprobs[i, :n] = torch.tensor(ep.logprobs)
            entropies[i, :n] = torch.tensor(ep.entropies)
        return RolloutBatch(
            prompt_ids=first.prompt_ids.cpu(),
            prompt_mask=first.prompt_mask.cpu(),
            completion_ids=ids,
            completion_mask=mask,
            logprobs=logprobs,
            entropies=entropies,
            truncated=torch.tensor([ep.truncated for ep in episodes], dtype=torch.bool),
            texts=[ep.text for ep in episodes],
            group_size=first.group_size,
            tool_mask=tool_mask,
            episodes=[ep.record(self.prefill) for ep in episodes],
        )


# ---------------------------------------------------------------------------- set-up from a recipe

def build_toolbox(cfg) -> Toolbox | None:
    """The recipe's tools (None without `rollout.tools`); a ConfigError for a tool that does not exist."""
    r = cfg.rollout
    return Toolbox(r.tools, r.tool_timeout, r.max_tool_output_chars) if r.tools else None


def build_environment(cfg, accuracy) -> Callable[[], Environment] | None:
    """The recipe's environment factory (None without `rollout.environment`). `retry` judges a turn
    with `accuracy` (the recipe's accuracy reward) on that turn's text alone."""
    from .environments import environment_factory
    from .reward_runner import CORRECT

    if cfg.rollout.environment is None:
        return None

    def judge(turn_text: str, columns: dict) -> bool:
        scored = accuracy([turn_text], {k: [v] for k, v in columns.items()}, [""], 0, where="the retry environment")
        return bool(scored.total[0] >= CORRECT)

    return environment_factory(cfg.rollout.environment, judge, cfg.rollout.retry_feedback, cfg.rollout.retry_cost)


def prompt_with_tools(prompt, toolbox: Toolbox | None, describe: bool):
    """The recipe's prompt section with the tools described in the system prompt (at {tools}, or appended)."""
    if toolbox is None or not describe:
        return prompt
    text = toolbox.describe()
    system = prompt.system_prompt or ""
    system = system.replace("{tools}", text) if "{tools}" in system else (system + "\n\n" + text if system else text)
    return replace(prompt, system_prompt=system)


def multi_turn(cfg, engine: GenerationEngine, tokenizer, eos_token_ids: list[int], toolbox: Toolbox | None,
               environment: Callable[[], Environment] | None):
    """`engine` wrapped for tools and environments, or `engine` itself when the recipe has neither."""
    if toolbox is None and environment is None:
        return engine
    r = cfg.rollout
    return MultiTurnEngine(engine, tokenizer, eos_token_ids, toolbox, r.max_tool_calls, environment, r.max_turns,
                           cfg.prompt.template, cfg.prompt.prefill, r.tools_from_turn)  # > 1 is refused without an environment


COLUMNS = ("tool_calls", "turns", "env_reward", "turn_texts")  # what rewards may read from a multi-turn rollout


def reward_columns(data, multi_turn: bool) -> list[str]:
    """The columns the rewards receive: the task's (its first problem's keys but `id`), plus the
    multi-turn rollout's own `COLUMNS` when tools or an environment run (a clash is an error)."""
    first = (data.train or data.held_out or [{}])[0]
    columns = [k for k in first if k != "id"]
    if multi_turn:
        if clash := sorted(set(columns) & set(COLUMNS)):
            raise ConfigError(f"data: column(s) {', '.join(clash)} would be overwritten by the multi-turn rollout's own; rename them")
        columns += list(COLUMNS)
    return columns


def episode_columns(rollout: RolloutBatch) -> dict[str, list]:
    """The multi-turn columns rewards see, one value per completion ({} for a single-turn rollout):
    `tool_calls` (list of {name, arguments, output, error, seconds}), `turns`, `env_reward`, and
    `turn_texts` (what the model wrote in each turn, prefill first, the environment's feedback left out)."""
    if rollout.episodes is None:
        return {}
    return {key: [e[key] for e in rollout.episodes] for key in COLUMNS}


def episode_metrics(episodes: list[dict] | None, correct: torch.Tensor, prefix: str = "") -> dict:
    """Tool and environment metrics of a batch: calls per completion, error rate, share of completions
    that call a tool, accuracy with and without a call, turns per episode and how often a second
    turn fixes a wrong first answer (among *all* episodes whose first turn was judged wrong, retried or
    not) and the accuracy of the last turn judged."""
    if not episodes:
        return {}
    n = len(episodes)
    calls = [len(e["tool_calls"]) for e in episodes]
    errors = sum(1 for e in episodes for c in e["tool_calls"] if c["error"])
    used = torch.tensor([k > 0 for k in calls])
    m = {
        f"{prefix}tools/calls_per_completion": sum(calls) / n,
        f"{prefix}tools/error_rate": errors / sum(calls) if sum(calls) else 0.0,
        f"{prefix}tools/use_frac": float(used.float().mean()),
        f"{prefix}env/turns": sum(e["turns"] for e in episodes) / n,
    }
    if used.any():
        m[f"{prefix}tools/accuracy_with_tool"] = float(correct[used].float().mean())
    if (~used).any():
        m[f"{prefix}tools/accuracy_without_tool"] = float(correct[~used].float().mean())
    judged = [e["verdicts"] for e in episodes if e["verdicts"]]
    if judged:
        m[f"{prefix}env/first_turn_accuracy"] = sum(v[0] for v in judged) / len(judged)
        retried = [v for v in judged if not v[0] and len(v) > 1]
        wrong_first = sum(1 for v in judged if not v[0])
        m[f"{prefix}env/retried_frac"] = len(retried) / wrong_first if wrong_first else 0.0
        m[f"{prefix}env/final_turn_accuracy"] = sum(v[-1] for v in judged) / len(judged)
        if wrong_first:  # a wrong first answer that got no second turn (its budget ran out) counts as not fixed
            m[f"{prefix}env/second_turn_fix_rate"] = sum(v[1] for v in retried) / wrong_first
    return m
