"""The hand-written optimization loops MaRC and fAML ran before they became LightningModules (issue 14), kept only as
the references that tests/test_lightning_optim.py compares the Lightning runs with."""

from __future__ import annotations

import torch
from torch import Tensor

from amlx.attributors.faml import FUSED_DTYPES
from amlx.attributors.marc import SIGMA_MIN, MaRC, MaRCMask, marc_objective


def marc_fit(
    self: MaRC, model, x: Tensor, baseline: Tensor, attention_mask: Tensor, positions: Tensor, n_words: Tensor,
    target: Tensor, generators: list[torch.Generator], token_type_ids: Tensor | None = None,
):  # fmt: skip
    """The old ``MaRC.fit``: (token mask [batch, tokens], mask module, steps taken [batch], losses [batch, steps])."""
    device = x.device
    mask = MaRCMask(positions, n_words, self.w_init, self.sigma_init, self.kernel).to(device)
    opt = torch.optim.AdamW(mask.parameters(), lr=self.lr, weight_decay=self.weight_decay)
    lengths = attention_mask.sum(1).tolist()
    active = n_words.to(device) > 0
    best = torch.full((len(x),), float("inf"), device=device)
    since = torch.zeros(len(x), dtype=torch.long, device=device)
    taken = torch.zeros(len(x), dtype=torch.long, device=device)
    losses = torch.full((len(x), self.steps), float("nan"), device=device)
    for step in range(self.steps):
        rows = active.nonzero()[:, 0]
        if len(rows) == 0:
            break
        t = max(lengths[r] for r in rows.tolist())
        lam_words = mask.word_mask()
        flipped, noise = _marc_draw(self, lam_words, rows, n_words, lengths, t, x.shape[-1], generators)
        lam = mask.token_mask(flipped)[rows, :t, None].to(x.dtype)
        noise = noise.to(x.dtype)
        xr, br, am = x[rows, :t], baseline[rows, :t], attention_mask[rows, :t]
        keep = lam * xr + (1 - lam) * br + noise[0]
        comp = (1 - lam) * xr + lam * br + noise[1]
        types = None if token_type_ids is None else token_type_ids[rows, :t].repeat(2, 1)
        logits = model.logits(inputs_embeds=torch.cat([keep, comp]), attention_mask=torch.cat([am, am]),
                              token_type_ids=types)  # fmt: skip
        omega_lambda, omega_sigma = mask.regularizers(lam_words)
        loss = marc_objective(logits[: len(rows)], logits[len(rows) :], target[rows], omega_lambda[rows],
                              omega_sigma[rows], self.alpha_lambda, self.alpha_sigma, self.scoring,
                              self.complement)  # fmt: skip
        before = [p.detach().clone() for p in (mask.w, mask.sigma)]
        opt.zero_grad(set_to_none=False)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            for p, old in zip((mask.w, mask.sigma), before):
                p.copy_(torch.where(active[:, None], p, old))
            mask.sigma.clamp_(min=SIGMA_MIN)
        taken[rows] += 1
        value = loss.detach()
        losses[rows, step] = value
        if self.patience is not None:
            improved = value < best[rows] - self.min_delta
            best[rows] = torch.where(improved, value, best[rows])
            since[rows] = torch.where(improved, 0, since[rows] + 1)
            active[rows] = since[rows] < self.patience
    with torch.no_grad():
        return mask.token_mask(), mask, taken, losses


def _marc_draw(self, lam_words, rows, n_words, lengths, t, hidden, generators):
    flip = torch.zeros(lam_words.shape, dtype=torch.bool)
    value = torch.zeros(lam_words.shape)
    noise = torch.zeros(2, len(rows), t, hidden)
    for k, r in enumerate(rows.tolist()):
        g, n = generators[r], int(n_words[r])
        flip[r, :n] = torch.rand(n, generator=g) < self.flip_prob
        value[r, :n] = (torch.rand(n, generator=g) < 0.5).float()
        noise[:, k, : lengths[r]] = torch.randn(2, lengths[r], hidden, generator=g) * self.noise_std
    flip, value = flip.to(lam_words.device), value.to(lam_words.device, lam_words.dtype)
    return torch.where(flip, value, lam_words), noise.to(lam_words.device)


def faml_optimize(self, forward, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The old ``FAML._optimize``: (map, loss) before each Adam step and after the last."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
    opt = torch.optim.Adam(params, lr=self.lr, fused=fused or None)
    maps, losses = [], []
    for s in range(self.steps + 1):
        with torch.set_grad_enabled(s < self.steps):
            a, loss = forward()
        maps.append(a.detach())
        losses.append(loss.detach())
        if s == self.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return torch.stack(maps, 1), torch.stack(losses, 1)


def rpi_candidate_maps(self, enc, model, target: Tensor) -> tuple[Tensor, Tensor]:
    """The old ``RPI.candidate_maps``: the pool M^J [B, |J|·R, tokens] and F(x) [B, classes], group by group."""
    from torch import nn

    from amlx.methods.diffusion import sample_baselines
    from amlx.methods.rpi import capture, path_integral, resolve_layers

    layers = resolve_layers(model, self.layers)
    per_group = max(1, self.internal_batch_size // (self.n_baselines * self.n_steps))
    maps, logits = [], []
    for start in range(0, len(enc), per_group):
        group = enc.select(slice(start, start + per_group))
        cap = capture(model, group, layers, self.reuse_prefix)
        tgt = target[start : start + per_group]
        pool = []
        for layer in layers:
            allowed = cap.allowed[layer]
            if self.baseline_support == "full":
                allowed = group.attention_mask.bool()[:, None, None, :].expand_as(allowed)
            base = sample_baselines(cap.probs[layer], allowed, self.n_baselines, self.alpha_bars,
                                    self.noise_scale, self.generator)  # fmt: skip
            pool.append(path_integral(model, group, tgt, cap, layer, base, self.n_steps, self.output,
                                      self.difference_factor, self.internal_batch_size))  # fmt: skip
        m = torch.cat(pool, 1)
        maps.append(nn.functional.pad(m, (0, enc.input_ids.shape[1] - m.shape[-1])))
        logits.append(cap.logits)
    return torch.cat(maps), torch.cat(logits).float().softmax(-1)
