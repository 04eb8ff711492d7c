# bash completion for svdllmctl (installed as bash-completion/completions/svdllmctl).
# Plain bash (compgen, complete): works with or without the bash-completion
# package. Completes commands, each command's options (the same table as
# svdllmctl's own check), option values with a fixed set, paths, and job ids
# from `svdllmctl list` against the socket given on the line.

_svdllmctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=""
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    local commands="ping version submit status list watch cancel resume rm eval generate sweep help"
    local global="--socket --json --help --version"

    # The command and the socket given so far.
    local cmd="" socket="" i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --socket) socket=${COMP_WORDS[i + 1]}; ((i++)) ;;
        --socket=*) socket=${w#--socket=} ;;
        --model|--out|--method|--ratio|--alpha|--ranks|--layers|--attn-split|--calib|--nsamples|\
        --seqlen|--seed|--calib-windows|--eval-text|--eval-seqlen|--eval-max-windows|--text|\
        --max-windows|--state|--limit|--methods|--ratios|--out-dir|--svg|--prompt|--max-tokens|--temperature|--top-p) ((i++)) ;;
        -*) ;;
        *) [ -z "$cmd" ] && cmd=$w ;;
        esac
    done

    case $prev in
    --socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --model|--out|--out-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --calib|--eval-text|--text|--svg) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --methods)   # a comma-separated list: complete its last item
        local head=""; [[ $cur == *,* ]] && head=${cur%,*},
        COMPREPLY=($(compgen -P "$head" -W "svd svdllm asvd awsvd svdllm-update rom lorap rrr auto" -- "${cur##*,}")); return ;;
    --method) COMPREPLY=($(compgen -W "svd svdllm asvd awsvd svdllm-update rom lorap rrr auto" -- "$cur")); return ;;
    --ranks) COMPREPLY=($(compgen -W "default uniform lorap last-n auto sensitive" -- "$cur")); return ;;
    --calib-windows) COMPREPLY=($(compgen -W "random first" -- "$cur")); return ;;
    --state) COMPREPLY=($(compgen -W "queued running done failed cancelled" -- "$cur")); return ;;
    --ratio|--alpha|--layers|--attn-split|--nsamples|--seqlen|--seed|--eval-seqlen|\
    --eval-max-windows|--max-windows|--limit|--ratios|--max-tokens|--temperature|--top-p) return ;;   # a number: nothing to offer
    --prompt) return ;;   # free text
    esac

    local opts=""
    case $cmd in
    submit) opts="--model --out --method --ratio --ranks --layers --attn-split --centered --alpha
                  --calib --nsamples --seqlen --seed --calib-windows --dense --overwrite
                  --keep-checkpoints --eval-text --eval-seqlen --eval-max-windows" ;;
    list) opts="--state --limit" ;;
    eval) opts="--model --text --seqlen --max-windows" ;;
    sweep) opts="--model --methods --ratios --eval-text --eval-seqlen --eval-max-windows --out-dir --svg
                 --ranks --layers --attn-split --centered --alpha --calib --nsamples --seqlen --seed
                 --calib-windows --dense --overwrite" ;;
    generate) opts="--model --prompt --max-tokens --temperature --top-p --seed --no-bos" ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$global $opts" -- "$cur"))
    elif [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    else
        case $cmd in
        help)
            COMPREPLY=($(compgen -W "${commands% help}" -- "$cur")) ;;
        status|watch|cancel|resume|rm)
            # Job ids: the first column of `list`, skipping its header.
            local ids
            ids=$(svdllmctl ${socket:+--socket "$socket"} list 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}')
            COMPREPLY=($(compgen -W "$ids" -- "$cur")) ;;
        esac
    fi
}
complete -F _svdllmctl svdllmctl
