"""What the chapters taught, in one place, so that later notebooks can import earlier code.

Imports only. Each chapter's code is written once, in the notebook cell that teaches it, and
exported from there (cells marked `#| export`) to course/<module>.py by `python -m course.export`;
course/infra.py holds the course's plumbing (files, downloads, errors), which no chapter teaches.
Every name here is the object its chapter defined: no module changes another's classes. Where a
later chapter defines a new version of a function under the same name (4b's generate() and
train_model_simple(), which wrap chapter 4's), this file gives the later one; a later chapter
extends a class under a new name (4b's GPTModelWithCache is chapter 3's GPTModel with a KV cache).
"""
# Infrastructure, not taught: course/infra.py
from course.infra import (DATA_DIR, MIRROR_ENV, ROOT, CheckpointError, CourseError, DataFileError,
                          atomic_write, display_path, get_data_file, load_manifest,
                          prepare_tiktoken_offline, sha256_of)
# 1 Data: notebooks/LLM-data-preprocessing.ipynb -> course/ch1_data.py
from course.ch1_data import END_OF_TEXT_ID, GPTDatasetV1, create_dataloader_v1
# 1b BPE from scratch (companion): notebooks/LLM-bpe-from-scratch.ipynb -> course/ch1b_tokenizer.py
from course.ch1b_tokenizer import GPT2Tokenizer, bytes_to_unicode, train_bpe
# 2 Attention: attention/LLM_attention.ipynb -> course/ch2_attention.py
from course.ch2_attention import MultiHeadAttention, head_attention_weights
# 3 Architecture: architecture/LLM-GPT-arch.ipynb -> course/ch3_architecture.py
from course.ch3_architecture import (GELU, GPT_124M_CONFIG, GPT_FAMILY, FeedForward, GPTModel,
                                     LayerNorm, TransformerBlock, check_config, generate_text_simple)
# 4 Training: training/LLM-training.ipynb -> course/ch4_training.py
from course.ch4_training import (GPT_SMALL_CONFIG, calc_loss_batch, calc_loss_loader, evaluate_model,
                                 generate_and_print_sample, get_device, lr_at_step, text_to_token_ids,
                                 token_ids_to_text, weight_decay_groups)
# 4b Performance: training/LLM-performance.ipynb -> course/ch4b_performance.py
# (GPTModelWithCache: chapter 3's model whose forward also takes a KV cache; its generate() uses the
# cache for any model that takes one; its train_model_simple is chapter 4's with a bf16 switch, off by default)
from course.ch4b_performance import (GPTModelWithCache, KVCache, KVCachedModel, MixedPrecisionModel,
                                     cached_attention, cached_block, generate, has_native_bf16, make_adamw,
                                     takes_kv_cache, train_model_simple, use_bf16)
# 4c Scale out: training/LLM-distributed.ipynb -> course/ch4c_distributed.py
from course.ch4c_distributed import DDPModel, ReshufflingSampler
# 5 Saving & loading, GPT-2 weights: post_training/LLM-saving-loading.ipynb -> course/ch5_saving.py
from course.ch5_saving import (GPT2_SIZES, assign_weight, gpt2_config, gpt2_weights_path,
                               load_checkpoint, load_gpt2_params, load_gpt2_safetensors,
                               load_pretrained_gpt2, save_checkpoint)
# 5b Modern open models: post_training/LLM-modern-open-model.ipynb -> course/ch5b_modern.py
from course.ch5b_modern import (SMOLLM2_135M_CONFIG, GroupedQueryAttention, LeftPadded, LlamaBlock, LlamaModel, RMSNorm,
                                SmolLM2Tokenizer, SwiGLU, chat, chat_prompt, generate_batch, load_gguf, load_smollm2)
# 6a Classification: finetune/LLM-finetune-classification.ipynb -> course/ch6a_classification.py
from course.ch6a_classification import (BASE_MODELS, NaiveBayes, SimilarLengthBatches, SpamDataset, TopLayers,
                                        TrunkOutputs, calc_accuracy_loader, calc_loss_batch_classifier, classify,
                                        create_balanced_dataset, hidden_states_before, last_real_token_logits,
                                        load_base_model, make_classifier, random_base_model, random_split,
                                        read_sms_collection, word_counts, words)
# 6b Instructions: finetune/LLM-finetune-instructions.ipynb -> course/ch6b_instructions.py
from course.ch6b_instructions import (BASE_PROMPT_FORMATS, PROMPT_FORMATS, RECIPES, InstructionDataset, answer_f1,
                                      answer_words, calc_loss_batch_at_targets, calc_response_loss, encode_prompt,
                                      format_chatml, format_input, generate_responses, has_key_answer,
                                      instruction_collate_fn, judge_scores, logits_at_targets, nearest_training_answer,
                                      ollama_is_running, score_responses, trunk_outputs, word_f1)
# 6c LoRA: finetune/LLM-finetune-lora.ipynb -> course/ch6c_lora.py
from course.ch6c_lora import LORA_TARGETS, LinearWithLoRA, LoRALayer, add_lora, matches, merge_lora, trainable_top
